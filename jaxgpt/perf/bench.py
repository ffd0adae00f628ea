"""`jaxgpt bench`: time the real train step, nanoGPT's bench.py for jaxgpt.

Builds the run exactly as `jaxgpt train` does (same config keys, mesh, optimizer and
compiled step), then reports compile time, the median time per iteration after warm-up,
tokens/s, achieved FLOP/s by nanoGPT's formula, MFU against the device's peak (the
datasheet table in mfu.py, or on a CPU a matmul peak measured now in the same dtype) and
peak memory. Batches are random tokens (synthetic) or windows of a prepared dataset.
"""

import dataclasses
import resource
import statistics
import time
from contextlib import nullcontext

import jax
import numpy as np

from jaxgpt import data, sharding, train
from jaxgpt.config import TrainConfig
from jaxgpt.model import num_params
from jaxgpt.perf import cpu
from jaxgpt.perf.mfu import device_peak, flops_per_token

GROUP = 5  # steps dispatched back to back (as in training) between two waits


def model_vocab(cfg: TrainConfig) -> int:
    return data.load_meta(cfg.data_dir, cfg.dataset)["vocab_size"]


def batch_source(cfg: TrainConfig, vocab: int, synthetic: bool):
    """step -> host windows of shape (accum, B, T + 1), as the training loop feeds them."""
    shape = (cfg.gradient_accumulation_steps, cfg.batch_size)
    if synthetic:

        def synthetic_batch(step: int) -> np.ndarray:
            rng = np.random.default_rng((cfg.seed, step))
            return rng.integers(0, vocab, shape + (cfg.block_size + 1,), dtype=np.int32)

        return synthetic_batch
    split = data.load_split(cfg.data_dir, cfg.dataset, "train", vocab)
    return lambda step: data.get_batch(split, cfg.block_size, shape, cfg.seed, "train", step)


def peak_memory_bytes() -> int:
    """Peak device memory on accelerators, the process's max RSS on a CPU."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_train(
    cfg: TrainConfig,
    iters: int = 20,
    warmup: int = 3,
    synthetic: bool = True,
    vocab_size: int = 50304,
    profile_dir: str | None = None,
    measure_peak: bool = True,
) -> dict:
    """Time `iters` compiled train steps after `warmup` (see time_steps); returns a dict
    of figures (see figures)."""
    mesh = sharding.make_mesh(cfg)
    sharding.check_batch(cfg, mesh)
    vocab = vocab_size if synthetic else model_vocab(cfg)
    model_cfg = cfg.model_config(vocab)
    tx = train.make_optimizer(cfg)
    state = train.create_state(model_cfg, tx, mesh, jax.random.key(cfg.seed))
    one_step = dataclasses.replace(cfg, steps_per_call=1, log_interval=1, eval_interval=1)
    step_fn = train.make_train_step(model_cfg, one_step, tx, mesh)
    next_batch = batch_source(cfg, vocab, synthetic)
    batch_sh = sharding.batch_sharding(mesh, 3, batch_dim=1)

    def step(i: int) -> jax.Array:
        nonlocal state
        state, metrics = step_fn(state, jax.device_put(next_batch(i), batch_sh))
        return metrics["loss"]  # dispatched asynchronously

    trace = jax.profiler.trace(profile_dir) if profile_dir else nullcontext()
    first, times, losses = time_steps(step, iters, warmup, trace)
    return figures(
        cfg,
        model_cfg,
        num_params(state.params, model_cfg),
        first,
        times,
        *device_peak(cfg.dtype, measure=measure_peak),
        device=f"{len(jax.devices())}x {jax.devices()[0].device_kind}",
        config=f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}C block {cfg.block_size} "
        f"batch {cfg.batch_size}x{cfg.gradient_accumulation_steps} {cfg.dtype}",
        memory_bytes=peak_memory_bytes(),
        losses=losses,
    )


def time_steps(step, iters: int, warmup: int, timed=nullcontext()):
    """Run steps 0..warmup+iters-1; step(i) dispatches step i and returns its loss, which
    float() waits for. Returns the first step's seconds (compilation included), the
    seconds per step of the `iters` timed steps (run inside `timed`) and their losses.

    Timed steps are dispatched in groups of GROUP without waiting, as the training loop
    does (the host prepares the next batch while the device computes); each is timed at
    its group's wall time / the group's size.
    """
    t0 = time.perf_counter()
    float(step(0))
    first = time.perf_counter() - t0
    for loss in [step(i) for i in range(1, warmup)]:
        float(loss)
    times, losses = [], []
    with timed:
        for group in range(0, iters, GROUP):
            t0 = time.perf_counter()
            pending = [step(i) for i in range(warmup + group, warmup + min(group + GROUP, iters))]
            losses += [float(x) for x in pending]  # waits for the group
            times += [(time.perf_counter() - t0) / len(pending)] * len(pending)
    return first, times, losses


def figures(
    cfg: TrainConfig,
    model_cfg,
    n_params: int,
    first: float,
    times: list[float],
    peak: float | None,
    peak_source: str,
    *,
    device: str,
    config: str,
    memory_bytes: int,
    losses: list[float],
) -> dict:
    """The result of a bench run (jaxgpt's or PyTorch's): time per iteration = median."""
    dt = statistics.median(times)
    tokens = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    flops = flops_per_token(model_cfg, n_params) * tokens / dt
    return {
        "device": device,
        "config": config,
        "allocator": cpu.allocator_in_use(),
        "params_m": n_params / 1e6,
        "compile_s": max(first - dt, 0.0),
        "ms_per_iter": dt * 1000,
        "ms_per_iter_all": [t * 1000 for t in times],
        "tokens_per_s": tokens / dt,
        "tflops": flops / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        "mfu": flops / peak if peak else None,
        "peak_memory_gb": memory_bytes / 1e9,
        "losses": losses,
    }


def format_result(r: dict) -> str:
    mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
    peak = f"{r['peak_tflops']:.3g} TFLOP/s ({r['peak_source']})" if r["peak_tflops"] else "n/a"
    return "\n".join(
        [
            f"device          {r['device']}, malloc: {r['allocator']}",
            f"config          {r['config']}, {r['params_m']:.2f}M params",
            f"compile         {r['compile_s']:.2f} s",
            f"time/iter       {r['ms_per_iter']:.2f} ms (median of {len(r['ms_per_iter_all'])})",
            f"tokens/s        {r['tokens_per_s']:,.0f}",
            f"achieved        {r['tflops'] * 1000:.1f} GFLOP/s",
            f"peak            {peak}",
            f"MFU             {mfu}",
            f"peak memory     {r['peak_memory_gb']:.2f} GB",
        ]
    )
