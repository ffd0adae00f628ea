"""The training run: data, state, the step loop, evaluation, logging and checkpoints.

Follows nanoGPT's train.py loop. At every eval_interval (and at the last step) both
splits are evaluated on fixed batches and `step N: train loss X, val loss Y` is printed;
a checkpoint is saved when val improves (or always, with always_save_checkpoint). The
checkpoint of step k holds the state after k updates, so `init_from=resume` re-enters the
loop at k and continues exactly as an uninterrupted run would.

Faults (watch/faults.py): SIGTERM/SIGINT saves a checkpoint at the current step and stops; an
update with a non-finite loss or gradient is skipped inside the compiled step, and
max_nonfinite_steps of them in a row stop the run; a checkpoint that cannot be written
stops it at once (SaveError, exit 74). A writing run holds out_dir's lock (watch/lock.py)
from setup to the end of train_loop. Reporting is watch/metrics.py's.
"""

import contextlib
import dataclasses
import functools
import signal
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from jaxgpt import checkpoint, data, sharding, train
from jaxgpt.config import ARCH_KEYS, ConfigError, GPTConfig, TrainConfig, from_dict, to_dict
from jaxgpt.model import abstract_params, num_params, unbox
from jaxgpt.watch import faults, lock, metrics

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
    steps: tuple[Future, Future] | None = None  # the train and eval steps, compiling
    elapsed: float = 0.0  # seconds of training before this segment (from the checkpoint)
    skipped: int = 0  # non-finite updates skipped so far
    stopped_by: str | None = None  # "SIGTERM", "SIGINT" or "preemption notice"
    out_dir_lock: lock.OutDirLock | None = None  # held by a writing run until train_loop ends


def log(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def _check_out_dir(out_dir: str) -> None:
    """out_dir must be a folder we can write, found before any training is done."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"out_dir {out_dir} is not writable ({reason}): set --out_dir") from None


def _check_vocabulary(ckpt_tokenizer: dict, meta: dict, dataset: str) -> None:
    keys = ("kind", "vocab_size", "chars", "encoding")
    old, new = ({k: m.get(k) for k in keys} for m in (ckpt_tokenizer, meta))
    if old != new:
        raise ConfigError(
            f"cannot resume: dataset {dataset!r} has another vocabulary ({new['kind']}, "
            f"{new['vocab_size']} tokens) than the checkpoint ({old['kind']}, "
            f"{old['vocab_size']} tokens): resume with the checkpoint's dataset"
        )


SHAPE_KEYS = ARCH_KEYS + ("vocab_size",)


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


def _pretrained_params(cfg: TrainConfig, vocab: int, load_pretrained):
    """nanoGPT's init_from=gpt2*: weights and model shape from pretrained weights."""
    if load_pretrained is None:
        raise ConfigError(
            f"init_from={cfg.init_from!r} needs a loader of pretrained weights "
            "(the jaxgpt command passes jaxgpt.interop.hf.run_weights)"
        )
    log(f"initializing from pretrained weights: {cfg.init_from}")
    params, model_cfg = load_pretrained(cfg)
    _check_vocab(vocab, model_cfg)
    return params, model_cfg


def compile_steps(cfg: TrainConfig, model_cfg: GPTConfig, tx, mesh) -> tuple[Future, Future]:
    """The train and eval steps, compiled in two threads while the state is created or
    restored: XLA compiles outside the GIL, so start-up waits for the longest compile, not
    for the sum of the three (on the CPU config 5.0 + 2.4 + 1.6 s)."""
    pool = ThreadPoolExecutor(2, thread_name_prefix="compile")
    make_train = functools.partial(train.make_train_step, model_cfg, cfg, tx, mesh, ahead=True)
    batch = (cfg.eval_iters, cfg.batch_size)
    steps = (
        pool.submit((lambda: None) if cfg.eval_only else make_train),
        pool.submit(train.make_eval_step, model_cfg, tx, mesh, ahead=batch),
    )
    pool.shutdown(wait=False)
    return steps


def _lock_out_dir(cfg: TrainConfig) -> lock.OutDirLock | None:
    """Take out_dir's lock (watch/lock.py) before anything there is written or cleaned up.
    Process 0 takes it for the whole run; the other processes of the run wait for its
    verdict, so none of them touches an out_dir that another run holds."""
    _check_out_dir(cfg.out_dir)
    held, busy = None, None
    if jax.process_index() == 0:
        try:
            held = lock.OutDirLock(cfg.out_dir).acquire()
        except lock.OutDirBusy as e:
            busy = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = multihost_utils.broadcast_one_to_all(np.int32(busy is not None))
        if refused and busy is None:
            text = (Path(cfg.out_dir) / lock.LOCK_FILE).read_text(encoding="utf-8")
            busy = lock.OutDirBusy(lock.busy_message(cfg.out_dir, text))
    if busy is not None:
        raise busy
    return held


def setup(cfg: TrainConfig, load_pretrained=None) -> Run:
    """Build the mesh, load data and create or restore the train state.

    Everything that can refuse the run is checked before out_dir is created or locked;
    a writing run (not eval_only) then holds out_dir's lock until train_loop ends.

    load_pretrained(cfg) -> (params, GPTConfig): the weights of init_from=gpt2*|DIR, shaped
    for this run (jaxgpt.interop.hf.run_weights). The loop reads no weight format itself.
    """
    sharding.init_distributed(cfg)
    mesh = sharding.make_mesh(cfg)
    sharding.check_batch(cfg, mesh)
    meta = data.load_meta(cfg.data_dir, cfg.dataset)
    vocab = meta["vocab_size"]
    splits = {
        s: data.load_split(cfg.data_dir, cfg.dataset, s, vocab, meta.get(f"{s}_tokens"))
        for s in data.SPLITS
    }
    for name, split in splits.items():
        if len(split) <= cfg.block_size:
            raise ConfigError(
                f"block_size={cfg.block_size} needs more than the {len(split)} tokens "
                f"of the {name} split"
            )
    metrics.check_wandb(cfg)
    tx = train.make_optimizer(cfg)
    iter_num, best_val_loss, ckpt_meta, pretrained = 0, float("inf"), {}, None
    writer = not cfg.eval_only
    # a resumed run locks its (existing) out_dir first: it may set damaged steps aside
    held = _lock_out_dir(cfg) if writer and cfg.init_from == "resume" else None
    try:
        if cfg.init_from == "resume":
            # one verified step for meta and state; a resumed run saves the damaged newer
            # steps anew, so it sets them aside (an evaluation leaves them as they are)
            step = checkpoint.usable_step(cfg.out_dir, set_aside=writer)
            _, ckpt_meta = checkpoint.restore_meta(cfg.out_dir, step)
            _check_vocabulary(ckpt_meta["tokenizer"], meta, cfg.dataset)
            model_cfg = _resume_model(cfg, ckpt_meta, vocab)
        elif cfg.init_from == "scratch":
            if 0 < cfg.vocab_size < vocab:
                raise ConfigError(f"vocab_size={cfg.vocab_size} < the dataset's {vocab} tokens")
            model_cfg = cfg.model_config(cfg.vocab_size or vocab)
        else:
            pretrained, model_cfg = _pretrained_params(cfg, vocab, load_pretrained)
        if writer and held is None:  # a new run: every check above passed, out_dir now
            held = _lock_out_dir(cfg)
            found = checkpoint.latest_step(cfg.out_dir)
            if found is not None:
                raise ConfigError(
                    f"out_dir {cfg.out_dir} already holds a run (checkpoint {found}): continue "
                    "it with --init_from=resume, or set another --out_dir"
                )
        steps = compile_steps(cfg, model_cfg, tx, mesh)
        if cfg.init_from == "resume":
            shardings = train.state_shardings(model_cfg, tx, mesh)
            template = jax.tree.map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                jax.eval_shape(lambda: train.init_state(unbox(abstract_params(model_cfg)), tx)),
                shardings,
            )
            iter_num, state, ckpt_meta = checkpoint.restore(cfg.out_dir, template, step)
            best_val_loss = ckpt_meta["best_val_loss"]
            log(f"resuming from {cfg.out_dir} at iter {iter_num}")
        elif cfg.init_from == "scratch":
            state = train.create_state(model_cfg, tx, mesh, jax.random.key(cfg.seed))
        else:
            state = train.state_from_params(pretrained, model_cfg, tx, mesh)
    except BaseException:
        if held is not None:
            held.release()
        raise
    log(f"number of parameters: {num_params(state.params, model_cfg) / 1e6:.2f}M")
    run = Run(cfg, model_cfg, mesh, meta, splits, tx, state, iter_num, best_val_loss, steps)
    run.elapsed, run.skipped = ckpt_meta.get("elapsed", 0.0), ckpt_meta.get("skipped", 0)
    run.out_dir_lock = held
    return run


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
        per_step = []
        for s in range(step, step + cfg.steps_per_call):
            w = data.get_batch(
                run.splits["train"], cfg.block_size, shape, cfg.seed, "train", s, rows
            )
            per_step.append(faults.poison(w, s, run.model_cfg.vocab_size))  # a test hook
        return np.stack(per_step) if cfg.steps_per_call > 1 else per_step[0]

    full = (cfg.steps_per_call,) + shape if cfg.steps_per_call > 1 else shape
    return _device_batch(run, windows, full, len(full) - 1)


def train_loop(run: Run) -> dict:
    """Run to max_iters, or until a stop signal; returns the last evaluated losses.

    A checkpoint that cannot be written (watch/faults.py's SaveError) stops the run at once,
    at the step where the failure surfaces (orbax saves in the background: it is polled
    every step), with the checkpoints already saved untouched."""
    cfg, k = run.cfg, run.cfg.steps_per_call
    mngr = None
    try:
        steps = run.steps or compile_steps(cfg, run.model_cfg, run.tx, run.mesh)
        step_fn, eval_fn = (f.result() for f in steps)
        evals = eval_batches(run)
        if not cfg.eval_only:
            mngr = checkpoint.manager(cfg.out_dir, keep=cfg.keep_checkpoints)
        n_params = num_params(run.state.params, run.model_cfg)
        with faults.write_errors(run, "metrics.jsonl"):
            rep = metrics.Reporter(cfg, run.model_cfg, n_params, run.iter_num, run.elapsed)
    except BaseException:
        if mngr is not None:
            faults.close_manager(mngr)
        _release(run)
        raise
    watch = faults.NonFiniteWatch(cfg.max_nonfinite_steps, run.skipped, rep.skip)
    losses, saved = {}, run.iter_num if cfg.init_from == "resume" else None
    writing = None  # the step of the save in progress
    # CPU collectives (gloo) have been seen to deadlock when processes with several local
    # devices each dispatch steps ahead; waiting on every step there costs nothing that matters
    sync = (
        jax.process_count() > 1 and jax.local_device_count() > 1 and jax.default_backend() == "cpu"
    )

    def save(iter_num: int) -> None:
        nonlocal saved, writing
        finish_save(wait=True)  # orbax would wait for it too, and raise its error here
        run.elapsed, run.skipped, saved = rep.elapsed(), watch.skipped, iter_num
        rep.write(f"saving checkpoint to {cfg.out_dir}")
        meta = faults.full_disk(iter_num, _ckpt_meta(run, iter_num))  # a test hook
        writing = iter_num
        with faults.save_errors(run, mngr, iter_num):
            checkpoint.save(mngr, iter_num, run.state, meta)

    def finish_save(wait: bool) -> None:
        """Raise the error of the save in progress once it has ended (wait: wait for it)."""
        nonlocal writing
        if writing is None or (not wait and mngr.is_saving_in_progress()):
            return
        step, writing = writing, None
        with faults.save_errors(run, mngr, step):
            mngr.wait_until_finished()

    try:
        with (
            faults.StopSignals(jax.process_count() > 1) as stop,
            faults.write_errors(run, "the logs"),
        ):
            while True:
                if run.iter_num % cfg.eval_interval == 0 or run.iter_num >= cfg.max_iters:
                    watch.flush()
                    losses = {s: float(eval_fn(run.state.params, w)) for s, w in evals.items()}
                    rep.eval(run.iter_num, losses)
                    if losses["val"] < run.best_val_loss or cfg.always_save_checkpoint:
                        run.best_val_loss = min(run.best_val_loss, losses["val"])
                        if run.iter_num > 0 and mngr is not None and saved != run.iter_num:
                            save(run.iter_num)  # (a resume's first step is saved already)
                if cfg.eval_only or run.iter_num >= cfg.max_iters:
                    break
                if stop.requested():
                    watch.flush()
                    if mngr is not None and saved != run.iter_num:
                        save(run.iter_num)
                    finish_save(wait=True)
                    run.stopped_by = stop.name
                    msg = f"{stop.name}: stopped at iter {run.iter_num}, checkpoint saved"
                    rep.stop(run.iter_num, stop.name, msg)
                    break
                run.state, step_metrics = step_fn(run.state, train_batch(run, run.iter_num))
                if sync:
                    jax.block_until_ready(step_metrics)
                watch.push(run.iter_num, step_metrics)
                rep.advance(k)
                if run.iter_num % cfg.log_interval == 0:  # the first of the k steps just run
                    rep.train(run.iter_num, step_metrics)
                run.iter_num += k
                finish_save(wait=False)
            watch.flush()
        if mngr is not None:
            finish_save(wait=True)
    except faults.NonFiniteError as e:
        rep.stop(run.iter_num, "nonfinite", str(e))
        if mngr is not None:
            finish_save(wait=True)  # the last save is sealed (or failed: SaveError, exit 74)
        good = checkpoint.verified_step(cfg.out_dir) if saved else None
        last = f"checkpoint {good}" if good is not None else "no checkpoint"
        raise faults.NonFiniteError(
            f"{e}: training stopped; {cfg.out_dir} keeps {last} (the last good state); "
            "lower learning_rate or check the data, then --init_from=resume"
        ) from None
    except faults.SaveError:
        with contextlib.suppress(OSError):  # the disk may be full for metrics.jsonl too
            rep.record("stop", run.iter_num, reason="save_failed")
        raise
    finally:
        run.skipped = watch.skipped
        if mngr is not None:
            faults.close_manager(mngr)
        with contextlib.suppress(OSError):
            rep.close()
        _release(run)
    return losses


def _release(run: Run) -> None:
    if run.out_dir_lock is not None:
        run.out_dir_lock.release()
        run.out_dir_lock = None


def _ckpt_meta(run: Run, iter_num: int) -> dict:
    return {
        "config": to_dict(run.cfg),
        "model": to_dict(run.model_cfg),
        "tokenizer": run.tokenizer_meta,
        "iter_num": iter_num,
        "best_val_loss": run.best_val_loss,
        "elapsed": run.elapsed,
        "skipped": run.skipped,
    }


def exit_code(run: Run) -> int:
    """0 when the run finished or a SIGTERM stopped it, 130 after Ctrl-C (SIGINT)."""
    return 128 + signal.SIGINT if run.stopped_by == "SIGINT" else 0


def run_training(cfg: TrainConfig) -> dict:
    return train_loop(setup(cfg))
