"""`jaxgpt train` in a child process, for tests that kill, signal or re-configure it."""

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import jaxgpt
from jaxgpt.config import TrainConfig, to_dict

ROOT = str(Path(jaxgpt.__file__).resolve().parents[1])


def train_args(cfg: TrainConfig) -> list[str]:
    """Every field of cfg as a --key=value override."""
    return [f"--{k}={v}" for k, v in to_dict(cfg).items()]


class TrainProcess:
    """A running `python -m jaxgpt.cli train ...`, its stdout read line by line."""

    def __init__(self, args: list[str], env: dict | None = None):
        full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "jaxgpt.cli", "train", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=self._drain, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _drain(self) -> None:
        self._stderr.extend(self.proc.stderr)

    def wait_for(self, prefix: str, timeout: float = 240) -> str:
        """Block until a stdout line starts with prefix; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line {prefix!r} in {timeout}s: {self.output()}") from None
            if line is None:
                raise AssertionError(f"process ended before {prefix!r}: {self.output()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float = 240) -> int:
        """The exit status, once the process ended and all its output was read."""
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr[-3000:]
