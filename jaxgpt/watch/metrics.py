"""What a run reports: console lines or a live bar, metrics.jsonl, TensorBoard, W&B.

On a terminal a tqdm bar shows loss, learning rate and tokens/s live, with nanoGPT's
lines printed above it; logging to a file gives the plain lines only. Every record is
also appended to `out_dir/metrics.jsonl` (one JSON object per line, flushed at once, so
a killed run loses at most the line being written), written as TensorBoard event files
under `out_dir/tensorboard` (tensorboard_log) and sent to Weights & Biases (wandb_log,
nanoGPT's keys; `WANDB_MODE=offline` needs no network). Process 0 writes all of them.

Records carry `kind` (start | train | eval | skip | stop), `step` and `time`: seconds of
training since the run began, carried across resumes through the checkpoint, so
`jaxgpt plot` can put several segments of one run on one clock.
"""

import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxgpt.config import ConfigError, GPTConfig, TrainConfig, to_dict
from jaxgpt.perf.mfu import device_peak, flops_per_token

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def check_wandb(cfg: TrainConfig) -> None:
    """Fail before training, in one line, when wandb_log=True and wandb is missing."""
    if not cfg.wandb_log:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(
            "wandb_log=True needs the wandb package: pip install wandb "
            "(or 'jaxgpt[wandb]'), or set --wandb_log=False"
        ) from None


def _first(x) -> float:
    """The first of steps_per_call values (or the only one) as a Python float."""
    return float(np.ravel(x)[0])


def tensorboard_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch
    when it is installed (only to accept torch tensors, which jaxgpt never logs), and that
    import costs ~2.7 s of every run's start on a 2-core CPU."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class Reporter:
    """Console, metrics.jsonl, TensorBoard and W&B output of one training segment."""

    def __init__(
        self, cfg: TrainConfig, model_cfg: GPTConfig, n_params: int, start: int, elapsed: float
    ):
        self.cfg = cfg
        self.primary = jax.process_index() == 0
        self.tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        self.flops_per_iter = flops_per_token(model_cfg, n_params) * self.tokens_per_iter
        self.peak, _ = device_peak(cfg.dtype)
        self.t0 = time.perf_counter() - elapsed
        self._t_log, self._iters = time.perf_counter(), 0
        self.last = {"lr": None, "mfu": None}
        self.bar = self.file = self.tb = self.wandb = None
        if not self.primary:
            return
        self.bar = _progress(cfg, start)
        if cfg.eval_only:  # a reader: it writes nothing in out_dir (watch/lock.py)
            return
        self.file = _open_jsonl(Path(cfg.out_dir) / METRICS_FILE, start)
        if cfg.tensorboard_log:
            SummaryWriter = tensorboard_writer()
            logdir = str(Path(cfg.out_dir) / TENSORBOARD_DIR)
            # purge_step hides the events a killed earlier segment wrote past `start`
            self.tb = SummaryWriter(logdir, purge_step=start, flush_secs=30)
        if cfg.wandb_log:
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project,
                name=cfg.wandb_run_name,
                config=to_dict(cfg),
                dir=cfg.out_dir,
            )
        self.record("start", start, resumed=start > 0, config=to_dict(cfg))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def record(self, kind: str, step: int, **fields) -> None:
        if self.file is not None:
            rec = {"kind": kind, "step": step, "time": round(self.elapsed(), 4), **fields}
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def write(self, line: str) -> None:
        if not self.primary:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, k: int) -> None:
        self._iters += k
        if self.bar is not None:
            self.bar.update(k)

    def train(self, step: int, metrics: dict) -> None:
        """nanoGPT's `iter` line for the first of the steps just run (call after advance),
        with the mean time per iteration since the last line."""
        m = jax.device_get({k: metrics[k] for k in ("loss", "lr", "grad_norm")})  # waits
        dt = (time.perf_counter() - self._t_log) / max(self._iters, 1)
        self._t_log, self._iters = time.perf_counter(), 0
        if not self.primary:
            return
        loss, lr, grad_norm = _first(m["loss"]), _first(m["lr"]), _first(m["grad_norm"])
        tok_s = self.tokens_per_iter / dt
        mfu = self.flops_per_iter / dt / self.peak * 100 if self.peak else None
        self.last = {"lr": lr, "mfu": mfu}
        mfu_text = f"{mfu:.2f}%" if mfu is not None else "n/a"
        self.write(
            f"iter {step}: loss {loss:.4f}, lr {lr:.2e}, time {dt * 1000:.2f}ms, "
            f"tok/s {tok_s:,.0f}, mfu {mfu_text}"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} tok/s {tok_s:,.0f}", False)
        fields = dict(loss=loss, lr=lr, grad_norm=grad_norm, ms_per_iter=dt * 1000)
        self.record("train", step, **fields, tok_per_s=tok_s, mfu=mfu)
        self._scalars(step, {"loss/train_batch": loss, "lr": lr, "grad_norm": grad_norm})
        self._scalars(step, {"tokens_per_sec": tok_s, "mfu": mfu})
        if self.wandb is not None:
            self.wandb.log({"iter": step, "train/batch_loss": loss, "lr": lr}, step=step)

    def eval(self, step: int, losses: dict) -> None:
        """nanoGPT's `step` line; evaluation time does not count as training time."""
        train_loss, val_loss = losses["train"], losses["val"]
        self.write(f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
        self.record("eval", step, train_loss=train_loss, val_loss=val_loss)
        self._scalars(step, {"loss/train": train_loss, "loss/val": val_loss})
        if self.tb is not None:
            self.tb.flush()
        if self.wandb is not None:  # nanoGPT's keys
            mfu = self.last["mfu"]
            row = {"iter": step, "train/loss": train_loss, "val/loss": val_loss}
            row |= {"lr": self.last["lr"], "mfu": mfu if mfu is not None else 0.0}
            self.wandb.log(row, step=step)
        self._t_log, self._iters = time.perf_counter(), 0

    def skip(self, step: int, loss: float, grad_norm: float, streak: int, skipped: int) -> None:
        self.write(
            f"iter {step}: non-finite loss {loss} or grad norm {grad_norm}: update skipped "
            f"({streak} in a row, {skipped} in total)"
        )
        self.record("skip", step, loss=loss, grad_norm=grad_norm, streak=streak, skipped=skipped)
        self._scalars(step, {"skipped_updates": skipped})

    def stop(self, step: int, reason: str, message: str) -> None:
        self.write(message)
        self.record("stop", step, reason=reason)

    def _scalars(self, step: int, values: dict) -> None:
        if self.tb is not None:
            for tag, value in values.items():
                if value is not None and np.isfinite(value):
                    self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.file is not None:
            self.file.close()


def _step(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def _open_jsonl(path: Path, start: int):
    """Append mode, after dropping what a killed segment wrote past the checkpoint this
    segment starts from: the records at steps >= start (they are redone) and a line cut
    short. The file is rewritten whole (a temporary file, then os.replace: a kill leaves
    the old or the new file), by the run that holds out_dir's lock, so each step is in
    it once however often the run was resumed."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [x for x in lines if (s := _step(x)) is not None and s < start]
        if len(kept) < len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
            os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")  # closed in Reporter.close


def _progress(cfg: TrainConfig, start: int):
    """A tqdm bar on an interactive terminal; None when logging to a file."""
    if cfg.eval_only or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_iters, initial=start, unit="it", dynamic_ncols=True)


def read_jsonl(out_dir: str) -> list[dict]:
    """The records of a run in the order they happened, without the work a killed segment
    did after its last checkpoint: a `start` record at step s drops earlier records at
    steps >= s (the resumed segment redoes them; a resume also drops them from the file, a
    file written before that did not). Unparseable lines (cut short) are skipped."""
    path = Path(out_dir) / METRICS_FILE
    records: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "start":
            records = [r for r in records if r["step"] < rec["step"]]
        records.append(rec)
    return records
