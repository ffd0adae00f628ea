"""The training run: data, state, the step loop, evaluation, logging and checkpoints.

Follows nanoGPT's train.py loop. At every eval_interval (and at the last step) both
splits are evaluated on fixed batches and `step N: train loss X, val loss Y` is printed;
a checkpoint is saved when val improves (or always, with always_save_checkpoint). The
checkpoint of step k holds the state after k updates, so `init_from=resume` re-enters the
loop at k and continues exactly as an uninterrupted run would.
"""

import dataclasses
import sys
import time

import jax
import numpy as np

from jaxgpt import checkpoint, data, sharding, train
from jaxgpt.config import ConfigError, GPTConfig, TrainConfig, from_dict, to_dict
from jaxgpt.mfu import device_peak, flops_per_token
from jaxgpt.model import abstract_params, num_params, unbox

EVAL_STREAM = 1  # data.get_batch stream of the fixed evaluation batches


@dataclasses.dataclass
class Run:
    """Everything the loop needs, wired once from the config."""

    cfg: TrainConfig
    model_cfg: GPTConfig
    mesh: jax.sharding.Mesh
    tokenizer_meta: dict
    splits: dict
    tx: object
    state: train.TrainState
    iter_num: int
    best_val_loss: float


def log(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


def _resume_model(cfg: TrainConfig, ckpt_meta: dict, vocab: int) -> GPTConfig:
    """The model to resume: the checkpoint's (as nanoGPT), with this run's dropout and
    compute options. The run must ask for the shape the checkpoint's run asked for (a
    run started from GPT-2 weights took its shape from the weights, not the config)."""
    saved = from_dict(TrainConfig, ckpt_meta["config"])
    for key in SHAPE_KEYS:
        old, new = getattr(saved, key), getattr(cfg, key)
        if old != new:
            raise ConfigError(
                f"cannot resume: checkpoint was trained with {key}={old} but this run asks "
                f"for {key}={new}"
            )
    model = checkpoint.model_config(ckpt_meta)
    _check_vocab(vocab, model)
    return dataclasses.replace(
        model,
        dropout=cfg.dropout,
        dtype=cfg.dtype,
        attention=cfg.attention,
        remat=cfg.remat,
        scan_layers=model.scan_layers,  # the checkpoint's parameter layout
    )


def _check_vocab(vocab: int, model: GPTConfig) -> None:
    if vocab > model.vocab_size:
        raise ConfigError(
            f"the dataset has {vocab} tokens but the model's vocab_size is {model.vocab_size}"
        )


def _pretrained_state(cfg: TrainConfig, vocab: int, tx, mesh):
    """nanoGPT's init_from=gpt2*: weights and model shape from GPT-2 (hub or directory)."""
    from jaxgpt import hf

    log(f"initializing from pretrained weights: {cfg.init_from}")
    params, model_cfg = hf.for_run(hf.load(cfg.init_from), cfg)
    _check_vocab(vocab, model_cfg)
    return train.state_from_params(params, model_cfg, tx, mesh), model_cfg


def setup(cfg: TrainConfig) -> Run:
    """Build the mesh, load data and create or restore the train state."""
    sharding.init_distributed(cfg)
    mesh = sharding.make_mesh(cfg)
    sharding.check_batch(cfg, mesh)
    meta = data.load_meta(cfg.data_dir, cfg.dataset)
    vocab = meta["vocab_size"]
    splits = {s: data.load_split(cfg.data_dir, cfg.dataset, s, vocab) for s in data.SPLITS}
    for name, split in splits.items():
        if len(split) <= cfg.block_size:
            raise ConfigError(
                f"block_size={cfg.block_size} needs more than the {len(split)} tokens "
                f"of the {name} split"
            )
    tx = train.make_optimizer(cfg)
    iter_num, best_val_loss = 0, float("inf")
    if cfg.init_from == "resume":
        _, ckpt_meta = checkpoint.restore_meta(cfg.out_dir)
        model_cfg = _resume_model(cfg, ckpt_meta, vocab)
        shardings = train.state_shardings(model_cfg, tx, mesh)
        template = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            jax.eval_shape(lambda: train.init_state(unbox(abstract_params(model_cfg)), tx)),
            shardings,
        )
        iter_num, state, ckpt_meta = checkpoint.restore(cfg.out_dir, template)
        best_val_loss = ckpt_meta["best_val_loss"]
        log(f"resuming from {cfg.out_dir} at iter {iter_num}")
    elif cfg.init_from == "scratch":
        if 0 < cfg.vocab_size < vocab:
            raise ConfigError(f"vocab_size={cfg.vocab_size} < the dataset's {vocab} tokens")
        model_cfg = cfg.model_config(cfg.vocab_size or vocab)
        state = train.create_state(model_cfg, tx, mesh, jax.random.key(cfg.seed))
    else:
        state, model_cfg = _pretrained_state(cfg, vocab, tx, mesh)
    log(f"number of parameters: {num_params(state.params, model_cfg) / 1e6:.2f}M")
    return Run(cfg, model_cfg, mesh, meta, splits, tx, state, iter_num, best_val_loss)


def _device_batch(run: Run, windows_fn, shape: tuple, batch_dim: int) -> jax.Array:
    """A global batch of windows: this process reads its rows and JAX assembles them."""
    sh = sharding.batch_sharding(run.mesh, len(shape) + 1, batch_dim)
    rows = sharding.process_rows(shape[-1], sharding.batch_sharding(run.mesh, 1))
    local = windows_fn(rows)
    return sharding.global_batch(local, sh, shape + (run.cfg.block_size + 1,))


def eval_batches(run: Run) -> dict:
    """The fixed evaluation windows of each split, on device: (eval_iters, B, T + 1)."""
    cfg = run.cfg
    shape = (cfg.eval_iters, cfg.batch_size)
    return {
        split: _device_batch(
            run,
            lambda rows, split=split: data.get_batch(
                run.splits[split], cfg.block_size, shape, cfg.seed, split, 0, rows, EVAL_STREAM
            ),
            shape,
            1,
        )
        for split in data.SPLITS
    }


def train_batch(run: Run, step: int) -> jax.Array:
    """Windows for the steps_per_call updates starting at `step`."""
    cfg = run.cfg
    shape = (cfg.gradient_accumulation_steps, cfg.batch_size)

    def windows(rows):
        per_step = [
            data.get_batch(run.splits["train"], cfg.block_size, shape, cfg.seed, "train", s, rows)
            for s in range(step, step + cfg.steps_per_call)
        ]
        return np.stack(per_step) if cfg.steps_per_call > 1 else per_step[0]

    full = (cfg.steps_per_call,) + shape if cfg.steps_per_call > 1 else shape
    return _device_batch(run, windows, full, len(full) - 1)


def train_loop(run: Run) -> dict:
    """Run to max_iters; returns the last evaluated losses {train, val}."""
    cfg, k = run.cfg, run.cfg.steps_per_call
    step_fn = train.make_train_step(run.model_cfg, cfg, run.tx, run.mesh)
    eval_fn = train.make_eval_step(run.model_cfg, run.tx, run.mesh)
    evals = eval_batches(run)
    mngr = checkpoint.manager(cfg.out_dir, keep=cfg.keep_checkpoints) if not cfg.eval_only else None
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    flops_per_iter = flops_per_token(run.model_cfg, num_params(run.state.params, run.model_cfg))
    flops_per_iter *= tokens_per_iter
    peak, _ = device_peak(cfg.dtype)
    bar = _progress(cfg, run.iter_num)
    # CPU collectives (gloo) have been seen to deadlock when processes with several local
    # devices each dispatch steps ahead; waiting on every step there costs nothing that matters
    sync = (
        jax.process_count() > 1 and jax.local_device_count() > 1 and jax.default_backend() == "cpu"
    )
    losses, state, iter_num = {}, run.state, run.iter_num
    t_log, iters_since_log = time.perf_counter(), 0
    while True:
        if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters:
            losses = {s: float(eval_fn(state.params, w)) for s, w in evals.items()}
            train_loss, val_loss = losses["train"], losses["val"]
            _write(bar, f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
            if losses["val"] < run.best_val_loss or cfg.always_save_checkpoint:
                run.best_val_loss = min(run.best_val_loss, losses["val"])
                if iter_num > 0 and mngr is not None:
                    checkpoint.save(mngr, iter_num, state, _ckpt_meta(run, iter_num))
            # evaluation time is not training time
            t_log, iters_since_log = time.perf_counter(), 0
        if cfg.eval_only or iter_num >= cfg.max_iters:
            break
        state, metrics = step_fn(state, train_batch(run, iter_num))
        if sync:
            jax.block_until_ready(metrics)
        iters_since_log += k
        if iter_num % cfg.log_interval == 0:  # log the first of the k steps just run
            loss = float(np.ravel(jax.device_get(metrics["loss"]))[0])
            lr = float(np.ravel(jax.device_get(metrics["lr"]))[0])
            dt = (time.perf_counter() - t_log) / max(iters_since_log, 1)
            t_log, iters_since_log = time.perf_counter(), 0
            mfu = f"{flops_per_iter / dt / peak * 100:.2f}%" if peak else "n/a"
            line = (
                f"iter {iter_num}: loss {loss:.4f}, lr {lr:.2e}, time {dt * 1000:.2f}ms, "
                f"tok/s {tokens_per_iter / dt:,.0f}, mfu {mfu}"
            )
            _write(bar, line)
            if bar is not None:
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e}", refresh=False)
        iter_num += k
        if bar is not None:
            bar.update(k)
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    if bar is not None:
        bar.close()
    run.state, run.iter_num = state, iter_num
    return losses


def _ckpt_meta(run: Run, iter_num: int) -> dict:
    return {
        "config": to_dict(run.cfg),
        "model": to_dict(run.model_cfg),
        "tokenizer": run.tokenizer_meta,
        "iter_num": iter_num,
        "best_val_loss": run.best_val_loss,
    }


def _progress(cfg: TrainConfig, start: int):
    """A tqdm bar on an interactive terminal (process 0); None when logging to a file."""
    if cfg.eval_only or jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_iters, initial=start, unit="it", dynamic_ncols=True)


def _write(bar, line: str) -> None:
    if bar is not None:
        bar.write(line)
    else:
        log(line)


def run_training(cfg: TrainConfig) -> dict:
    return train_loop(setup(cfg))
