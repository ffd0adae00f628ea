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
- Test hooks, read from the environment, no cost when unset: JAXGPT_FAULT_NAN_ITERS=7,8
  poisons those iterations' training batches so their loss is NaN; and
  JAXGPT_FAULT_KILL_IN_SAVE=20 SIGKILLs the process while checkpoint 20 is being written.
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

NAN_ITERS_ENV = "JAXGPT_FAULT_NAN_ITERS"
KILL_IN_SAVE_ENV = "JAXGPT_FAULT_KILL_IN_SAVE"


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the CLI prints it as one line, exit 1."""


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
