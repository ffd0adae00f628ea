"""JAX vs PyTorch on the same machine: the same model, init, batches and optimizer.

`torch_bench_train` times the project's PyTorch reference (interop/torch_ref.py,
nanoGPT's model, AdamW groups, schedule and clipping, or jaxgpt's Muon with
optimizer=muon; autocast, fused AdamW and TF32 on CUDA as nanoGPT's train.py) starting
from jaxgpt's initial weights on jaxgpt's batches, and returns the
same figures as bench.bench_train. `compare` runs jaxgpt, PyTorch eager and
torch.compile alternately, each run in its own process (A B C A B C ...), and reports
medians and the ratio of each pair of runs.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys

import jax
import numpy as np

from jaxgpt import train
from jaxgpt.config import TrainConfig
from jaxgpt.interop import statedict
from jaxgpt.model import init_params, num_params
from jaxgpt.perf import bench, cpu
from jaxgpt.perf.mfu import PEAK_FLOPS, device_peak

# what a comparison runs: jaxgpt (with its CPU allocator, perf/cpu.py), PyTorch as users run
# it, PyTorch eager with jaxgpt's allocator (tcmalloc, when installed), torch.compile
IMPLS = ("jax", "torch", "torch+tcmalloc", "torch-compile")


def torch_bench_train(
    cfg: TrainConfig,
    iters: int = 20,
    warmup: int = 3,
    synthetic: bool = True,
    vocab_size: int = 50304,
    compile: bool = False,
    measure_peak: bool = True,
) -> dict:
    import torch

    from jaxgpt.interop import torch_ref

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(cfg.seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vocab = vocab_size if synthetic else bench.model_vocab(cfg)
    model_cfg = cfg.model_config(vocab)
    # jaxgpt's init, computed on the CPU (run with JAX_PLATFORMS=cpu so that JAX leaves the
    # GPU's memory to PyTorch)
    params = init_params(
        dataclasses.replace(model_cfg, attention="einsum"), jax.random.key(cfg.seed)
    )
    n_params = num_params(params, model_cfg)
    model = torch_ref.GPT(model_cfg)
    state = {
        k: torch.from_numpy(v.copy()) for k, v in statedict.to_nanogpt(params, model_cfg).items()
    }
    model.load_state_dict(state)
    model.to(device).train()
    optimizer = model.configure_optimizers(
        cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), torch_ref.muon_settings(cfg)
    )
    if cuda:
        for group in optimizer.param_groups:
            group["fused"] = True
    step_model = torch.compile(model) if compile else model
    autocast = torch.amp.autocast(
        device_type=device, dtype=getattr(torch, cfg.dtype), enabled=cfg.dtype != "float32"
    )
    next_batch = bench.batch_source(cfg, vocab, synthetic)
    accum = cfg.gradient_accumulation_steps

    def step(it: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = float(train.get_lr(it, cfg)) * group.get("lr_scale", 1.0)
        windows = torch.from_numpy(next_batch(it)).long()
        x = windows[..., :-1].contiguous().to(device, non_blocking=True)  # (accum, B, T)
        y = windows[..., 1:].contiguous().to(device, non_blocking=True)
        total = 0.0
        for micro in range(accum):
            with autocast:
                _, loss = step_model(x[micro], y[micro])
            (loss / accum).backward()
            total = total + loss.detach() / accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    first, times, losses = bench.time_steps(step, iters, warmup)
    if cuda:  # JAX sees only the CPU here: take the peak of the GPU's name
        kind = torch.cuda.get_device_name()
        peak = next((p.get(cfg.dtype) for k, p in PEAK_FLOPS.items() if k in kind), None)
        peak_source = f"{kind} {cfg.dtype} datasheet"
        mem, name = torch.cuda.max_memory_allocated(), f"1x {kind}"
    else:
        peak, peak_source = device_peak(cfg.dtype, measure=measure_peak)
        mem, name = bench.peak_memory_bytes(), f"cpu ({torch.get_num_threads()} threads)"
    return bench.figures(
        cfg,
        model_cfg,
        n_params,
        first,
        times,
        peak,
        peak_source,
        device=name,
        config=f"torch {torch.__version__}{' compile' if compile else ' eager'}",
        memory_bytes=mem,
        losses=losses,
    )


def impl_env(impl: str, env=os.environ) -> dict:
    """The environment of a bench run: PyTorch runs keep JAX on the CPU; `torch` and
    `torch-compile` run with the C library's malloc, as users run PyTorch (no tcmalloc
    inherited from this process), `torch+tcmalloc` and `jax` with jaxgpt's allocator."""
    if impl == "jax":
        return dict(env)
    new = dict(env, JAX_PLATFORMS="cpu")
    if not impl.endswith("+tcmalloc"):
        preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "malloc" not in p]
        new.update(JAXGPT_MALLOC="system", LD_PRELOAD=":".join(preload))
    return new


def run_subprocess(impl: str, argv: list[str]) -> dict:
    """One bench run of `impl` in a fresh process; its JSON result."""
    base = impl.split("+")[0]
    cmd = [sys.executable, "-m", "jaxgpt.cli", "bench", *argv, f"--impl={base}", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=impl_env(impl))
    if out.returncode:
        raise RuntimeError(f"{impl} bench failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{impl}: {result['ms_per_iter']:.2f} ms/iter, compile {result['compile_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def compare(argv: list[str], impls: tuple[str, ...], rounds: int) -> dict:
    """Alternate the implementations `rounds` times; medians and paired ratios to jax.
    `+tcmalloc` variants are left out where no tcmalloc is installed."""
    if cpu.allocator_library() is None:
        impls = tuple(i for i in impls if not i.endswith("+tcmalloc"))
    runs = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            runs[impl].append(run_subprocess(impl, argv))
    summary = {}
    for impl, results in runs.items():
        ms = [r["ms_per_iter"] for r in results]
        ratios = [j["ms_per_iter"] / r["ms_per_iter"] for j, r in zip(runs[impls[0]], results)]
        median_ms = statistics.median(ms)
        tokens_per_iter = results[0]["tokens_per_s"] * results[0]["ms_per_iter"] / 1000
        mfus = [r["mfu"] for r in results if r["mfu"] is not None]
        summary[impl] = {
            "median_ms": median_ms,
            "runs_ms": ms,
            "ratio_to_first": statistics.median(ratios),
            "paired_ratios": ratios,
            "tokens_per_s": tokens_per_iter / median_ms * 1000,
            "mfu": statistics.median(mfus) if mfus else None,  # each run against its peak
            "result": results[-1],
        }
    return summary


def markdown_table(summary: dict) -> str:
    first = next(iter(summary))
    lines = [
        f"| implementation | malloc | median ms/iter | runs (ms/iter) | {first} / this (paired) "
        "| tokens/s | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl, s in summary.items():
        r = s["result"]
        mfu = f"{s['mfu'] * 100:.1f}%" if s["mfu"] is not None else "n/a"
        runs = ", ".join(f"{m:.1f}" for m in s["runs_ms"])
        lines.append(
            f"| {impl} ({r['config']}) | {r['allocator']} | {s['median_ms']:.2f} | {runs} | "
            f"{s['ratio_to_first']:.3f} | {s['tokens_per_s']:,.0f} | {mfu} |"
        )
    return "\n".join(lines)


def plot_losses(summary: dict, path: str) -> None:
    """Loss vs step and vs wall-clock for each implementation's last run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for impl, s in summary.items():
        r = s["result"]
        losses = np.asarray(r["losses"])
        ax1.plot(np.arange(len(losses)), losses, label=impl)
        ax2.plot(np.cumsum(r["ms_per_iter_all"]) / 1000, losses, label=impl)
    ax1.set(xlabel="timed step", ylabel="train loss", title="loss vs step")
    ax2.set(xlabel="wall-clock (s)", ylabel="train loss", title="loss vs wall-clock")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
