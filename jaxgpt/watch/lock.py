"""One writing run per out_dir: an exclusive `fcntl.flock` on `out_dir/.jaxgpt.lock`.

A run that writes to out_dir (a fresh run or a resume) takes the lock before anything in
out_dir is written or cleaned up (orbax's CheckpointManager removes temporary folders
when it opens: without the lock a starting resume deleted a running trainer's save in
progress). A second writer is refused in one line naming the holder, which the file holds
as JSON (host, pid, since). flock belongs to the open file, so a lock left by a killed
process is gone with the process; the file itself is never removed (removing a lock file
lets two processes lock two different files of one name), only emptied on release.

The processes of one multi-process run share out_dir by design: process 0 takes the lock
for the whole run, and the other processes wait for its verdict before they write
(loop.py). flock reaches other hosts on a shared filesystem where the filesystem supports
it (NFSv4, Lustre with flock on); where it does not, the run goes on unlocked after a
warning.

Readers take no lock: eval_only and `jaxgpt sample` open checkpoints read-only (nothing
cleaned, nothing deleted) and write nothing in out_dir, so they neither block nor break
a running trainer, and a trainer never waits for them. A trainer deletes only steps older
than its keep_checkpoints newest, so a reader's restore of the latest step fails only if
it lasts longer than that many saves.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".jaxgpt.lock"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a filesystem without flock


class OutDirBusy(RuntimeError):
    """out_dir is in use by another run; the CLI prints it as one line, exit 2."""


def holder(info: dict) -> str:
    """'pid 123 on host since 2026-12-03 06:40:01 UTC' from the lock file's JSON."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["since"]))
    return f"pid {info['pid']} on {info['host']} since {since}"


def busy_message(out_dir: str, text: str) -> str:
    try:
        who = holder(json.loads(text))
    except (ValueError, KeyError, TypeError):
        who = "another process (it has not written its name yet)"
    return (
        f"out_dir {out_dir} is in use by a jaxgpt run ({who}): wait for it to end, or set "
        "another --out_dir"
    )


class OutDirLock:
    """The exclusive lock on out_dir; `acquire()` raises OutDirBusy when another holds it."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = Path(out_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> "OutDirLock":
        try:
            f = open(self.path, "a+", encoding="utf-8")  # never truncates the holder's name
        except OSError as e:
            raise OutDirBusy(f"cannot open the lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read()
            f.close()
            raise OutDirBusy(busy_message(self.out_dir, text)) from None
        except OSError as e:
            f.close()
            if e.errno not in NO_LOCKS:
                raise
            print(
                f"jaxgpt: warning: the filesystem of {self.out_dir} has no flock "
                "(another run could write there too)",
                file=sys.stderr,
            )
            return self
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time())}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info) + "\n")
        f.flush()
        self.file = f  # the lock lives as long as this open file (closed: released)
        return self

    def release(self) -> None:
        if self.file is None:
            return
        f, self.file = self.file, None
        try:
            f.truncate(0)  # still holding it: no one reads a stale name
        except OSError:
            pass
        f.close()  # closing the file releases the flock

    def __del__(self):  # a Run dropped without train_loop (tests, notebooks) lets go here
        self.release()
