"""Fault handling for long runs: stop signals, non-finite steps, and fault-injection hooks.

- `StopSignals`: SIGTERM (a scheduler's preemption notice) or SIGINT (Ctrl-C) asks the loop
  to save a checkpoint at the current step and exit; a second signal exits at once. In a
  multi-process run the processes must stop at the same step, so there the loop asks JAX's
  preemption service instead (`multihost_utils.reached_preemption_sync_point`, on by
  default with `jax.distributed`: it catches SIGTERM itself, e.g. a TPU VM's maintenance
  notice, and agrees on the step to stop at).
- `NonFiniteWatch`: the compiled step skips an update whose loss or gradient norm is not
  finite (train.py); the watch reads those flags one call late (so the host never waits on
  the step in flight), reports each skip, and stops the run after max_nonfinite_steps
  consecutive ones.
- `SaveError`: a checkpoint write that failed with an OS error (a full disk, a quota, a
  lost mount): `io_failure` recognises one in what orbax raises, `save_errors` turns it
  into one line (the step, out_dir, the space, the last good checkpoint), the loop stops
  at once and `close_manager` shuts orbax down without a thread left running.
- `held_orbax_logs`: orbax logs each failure it raises (tracebacks from its background
  threads, hundreds of lines for one full disk); the CLI holds orbax's warnings and
  errors back and drops them when it reports the failure in one line itself.
- Test hooks, read from the environment, no cost when unset: JAXGPT_FAULT_NAN_ITERS=7,8
  poisons those iterations' training batches so their loss is NaN;
  JAXGPT_FAULT_KILL_IN_SAVE=20 SIGKILLs the process while checkpoint 20 is being written;
  JAXGPT_FAULT_SAVE_OSERROR=20 makes the write of checkpoint 20 fail with ENOSPC (No space
  left on device) inside orbax's background commit, where a full disk fails it.
"""

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

NAN_ITERS_ENV = "JAXGPT_FAULT_NAN_ITERS"
KILL_IN_SAVE_ENV = "JAXGPT_FAULT_KILL_IN_SAVE"
SAVE_OSERROR_ENV = "JAXGPT_FAULT_SAVE_OSERROR"
EX_IOERR = 74  # sysexits.h: an I/O error, the exit status of a failed save


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the CLI prints it as one line, exit 1."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (an OS error); one line, exit 74 (EX_IOERR)."""


def io_failure(e: BaseException) -> OSError | None:
    """The OS error behind an exception orbax raised from a save, or None when there is
    none (a bug, not the disk). tensorstore, which writes the arrays, raises ValueError
    with the error code in its text (`[os_error_code='28']`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code:
            n = int(code.group(1))
            return OSError(n, os.strerror(n))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def save_errors(run, mngr, step: int):
    """Turn an OS error out of orbax's save of `step` into one line: what failed, where,
    the space it needed when the disk is full, and the checkpoint that is the last good."""
    try:
        yield
    except Exception as e:
        os_error = io_failure(e)
        if os_error is None:
            raise
        out_dir = run.cfg.out_dir
        reason = f"[Errno {os_error.errno}] {os_error.strerror}" if os_error.errno else str(e)
        if os_error.errno in (errno.ENOSPC, errno.EDQUOT):
            import jax

            need = sum(x.nbytes for x in jax.tree.leaves(run.state))
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(out_dir).free
                reason += f" ({_size(free)} free, the checkpoint needs ~{_size(need)})"
        last = mngr.latest_step()
        keeps = f"checkpoint {last} (the last good one)" if last is not None else "no checkpoint"
        raise SaveError(
            f"saving checkpoint {step} to {out_dir} failed: {reason}; training stopped at iter "
            f"{run.iter_num}; {out_dir} keeps {keeps}: free space or fix the disk, then "
            "--init_from=resume"
        ) from None


@contextlib.contextmanager
def write_errors(run, what: str):
    """An OS error writing the run's other files (metrics.jsonl, TensorBoard events) into
    out_dir stops the run as a failed save does: one line, exit 74."""
    try:
        yield
    except OSError as e:
        reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
        raise SaveError(
            f"writing {what} to {run.cfg.out_dir} failed: {reason}; training stopped at iter "
            f"{run.iter_num}: free space or fix the disk, then --init_from=resume"
        ) from None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def close_manager(mngr) -> None:
    """Close a CheckpointManager even after a failed save, so that no orbax thread outlives
    the run (at interpreter shutdown they fail with tracebacks): orbax raises a failed
    save's error once from each place that kept it (its finalize thread, its async
    writer), the first already reported; and it stops waiting for a save's writer threads
    at the first error, so the others are joined here (orbax has no call for that)."""
    for _ in range(3):
        try:
            mngr.close()
            break
        except Exception:
            continue
    for t in threading.enumerate():
        if type(t).__module__.startswith("orbax.") and t is not threading.current_thread():
            t.join(timeout=120)


class _OrbaxLogs(logging.Filter):
    """Holds back orbax's warnings and errors (absl logger) instead of printing them."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and f"{os.sep}orbax{os.sep}" in record.pathname:
            self.held.append(record)
            return False
        return True

    def drop(self) -> None:
        self.held.clear()


@contextlib.contextmanager
def held_orbax_logs():
    """While the CLI runs a command, orbax's warnings and errors are held back; they are
    printed at the end unless the command ended in an error jaxgpt reported in one line
    (`drop()`), which orbax's log lines only repeat as tracebacks."""
    from absl import logging as absl_logging  # light; its logger must exist before orbax's

    logger = absl_logging.get_absl_logger()
    logs = _OrbaxLogs()
    logger.addFilter(logs)
    try:
        yield logs
    finally:
        logger.removeFilter(logs)
        for record in logs.held:
            logger.handle(record)


class StopSignals:
    """Catch SIGTERM/SIGINT while the loop runs: `requested()` turns True after one.

    multiprocess: the run spans several processes (jax.process_count() > 1). Handlers are
    installed only in single-process runs, on the main thread; the previous handlers
    come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, multiprocess: bool = False):
        self.multiprocess = multiprocess
        self.received: int | None = None
        self._previous = {}
        self._calls = 0

    def __enter__(self) -> "StopSignals":
        if self.multiprocess:
            return self  # JAX's preemption service owns SIGTERM, see requested()
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            print(f"jaxgpt: second signal ({name}): exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        print(
            f"jaxgpt: {name} received: saving a checkpoint at the current step "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self) -> bool:
        """True when the run should checkpoint now and stop. Call it once per step: the
        multi-process protocol numbers the calls to agree on the step to stop at."""
        self._calls += 1
        if self.received is not None:
            return True
        if self.multiprocess:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(self._calls)
            except RuntimeError:  # the preemption service is disabled
                return False
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "preemption notice"


class NonFiniteWatch:
    """Counts the updates the compiled step skipped; raises after max_streak in a row."""

    def __init__(self, max_streak: int, skipped: int, report):
        self.max_streak = max_streak
        self.skipped = skipped  # total over the run, restored from the checkpoint
        self.streak = 0
        self.report = report  # report(step, loss, grad_norm, streak, skipped)
        self._pending = None

    def push(self, step: int, metrics: dict) -> None:
        """Check the previous call's flags (that call has finished or nearly), keep these."""
        self.flush()
        self._pending = (step, metrics)

    def flush(self) -> None:
        if self._pending is None:
            return
        import jax

        step, metrics = self._pending
        self._pending = None
        m = jax.device_get({k: metrics[k] for k in ("nonfinite", "loss", "grad_norm")})
        flags, losses, norms = (np.ravel(m[k]) for k in ("nonfinite", "loss", "grad_norm"))
        for i, bad in enumerate(flags):
            if not bad:
                self.streak = 0
                continue
            self.streak += 1
            self.skipped += 1
            self.report(step + i, float(losses[i]), float(norms[i]), self.streak, self.skipped)
            if self.streak >= self.max_streak:
                raise NonFiniteError(
                    f"iter {step + i}: {self.streak} consecutive non-finite losses or gradient "
                    "norms (max_nonfinite_steps), updates skipped"
                )


def _env_steps(name: str) -> frozenset:
    text = os.environ.get(name, "")
    return frozenset(int(s) for s in text.split(",") if s.strip())


def poison(windows: np.ndarray, step: int, vocab_size: int) -> np.ndarray:
    """Test hook: at the iterations in $JAXGPT_FAULT_NAN_ITERS, put an out-of-vocabulary
    token in the batch (as a corrupt data file would). The embedding lookup (jnp.take, mode
    'fill') turns it into NaN, so the batch's loss and gradients are NaN."""
    if step not in _env_steps(NAN_ITERS_ENV):
        return windows
    windows = windows.copy()
    windows[..., 0, 0] = vocab_size
    return windows


def kill_in_save(step: int, directory: Path) -> None:
    """Test hook: SIGKILL this process while checkpoint `step` is being written (its
    temporary folder exists and the async write has not been renamed into place)."""
    if step not in _env_steps(KILL_IN_SAVE_ENV):
        return
    deadline = time.monotonic() + 5
    while not list(Path(directory).glob(f"{step}.orbax-checkpoint-tmp*")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


class _FullDisk(dict):
    """A meta dict whose JSON encoding fails as a write to a full disk does. orbax encodes
    and writes it in its background commit thread, so the error takes a real failed
    write's path: logged there, raised by wait_until_finished or the next save, the step
    left as a temporary folder and the older steps kept."""

    def items(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk(step: int, meta: dict) -> dict:
    """Test hook: at the step in $JAXGPT_FAULT_SAVE_OSERROR the checkpoint write fails
    with ENOSPC."""
    return _FullDisk(meta) if step in _env_steps(SAVE_OSERROR_ENV) else meta
