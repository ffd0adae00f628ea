"""Checkpoints in out_dir through orbax's CheckpointManager, each sealed by a manifest.

Each checkpoint is a step folder holding the train state (sharded arrays, restorable onto
any mesh) and a JSON `meta` item: the run config, the model config, the tokenizer, the
best validation loss so far. orbax writes a step into a temporary folder and renames it
when complete, so a run killed mid-save never leaves a checkpoint that loads wrongly;
temporary leftovers are removed when the manager opens.

The manifest: `<step>/jaxgpt-manifest.json` lists every file of the step folder (its path
relative to the folder, its size and sha256), except orbax's step bookkeeping
(`_CHECKPOINT_METADATA`, `commit_success.txt`), which orbax rewrites while it renames the
folder and which no restore depends on. It is written by orbax's post_finalization_callback:
in orbax's background thread (training goes on meanwhile), once all the step's files are
written and before the temporary folder is renamed, so a step folder never exists without
its manifest and a killed run leaves no step that is complete but unsealed. orbax itself has
no checksum of the stored bytes to verify (tensorstore's zarr3 writes crc32c on the shard
index only, OCDBT none; CheckpointManagerOptions has no verify option), hence this one.

Every restore (resume, eval_only, `jaxgpt sample`, `jaxgpt convert --from jaxgpt`) takes
`usable_step`: the newest step whose files match its manifest (present, same size, same
sha256). A damaged, truncated or incomplete newer step is skipped with one line on stderr
and left on disk; with none usable, a CheckpointError (one line, exit 2). A step without
a manifest is legacy (written before manifests) when no older step of the out_dir has one:
it is restored unchecked, and orbax's errors on it become one-line CheckpointErrors. A step
without a manifest after one that has one lost its manifest: incomplete, skipped.
"""

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxgpt.config import GPTConfig, from_dict
from jaxgpt.watch import faults

MANIFEST = "jaxgpt-manifest.json"
# orbax's step bookkeeping, rewritten by orbax after the manifest (while it renames the step)
UNSEALED = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt"})
# what a step without a manifest (legacy) must hold to be tried at all
LEGACY_REQUIRED = ("meta/metadata", "state/_METADATA")
DAMAGED_SUFFIX = ".damaged"  # a damaged step set aside by a resumed run (orbax ignores it)


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for; printed as one line, exit 2."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hashes(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each file, in threads (hashlib releases the GIL on large buffers)."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(root / n), names)))


def write_manifest(step_dir: Path) -> None:
    """Write step_dir's manifest atomically: a temporary file, fsync, rename."""
    step_dir = Path(step_dir)
    names = sorted(
        p.relative_to(step_dir).as_posix()
        for p in step_dir.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, MANIFEST + ".tmp")
        and p.relative_to(step_dir).as_posix() not in UNSEALED
    )
    sums = _hashes(step_dir, names)
    files = {n: {"size": (step_dir / n).stat().st_size, "sha256": sums[n]} for n in names}
    tmp = step_dir / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)


def damage(step_dir: Path) -> str | None:
    """Why step_dir does not match its manifest, or None when it does (or has none)."""
    step_dir = Path(step_dir)
    if not (step_dir / MANIFEST).is_file():
        return None
    try:
        files = json.loads((step_dir / MANIFEST).read_text())["files"]
        wanted = {n: (int(f["size"]), str(f["sha256"])) for n, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST}: unreadable"
    for name, (size, _) in sorted(wanted.items()):
        path = step_dir / name
        if not path.is_file():
            return f"{name}: missing"
        if path.stat().st_size != size:
            return f"{name}: truncated or grown, {path.stat().st_size} of {size} bytes"
    sums = _hashes(step_dir, sorted(wanted))
    for name, (_, digest) in sorted(wanted.items()):
        if sums[name] != digest:
            return f"{name}: sha256 mismatch"
    return None


class _Sealer:
    """orbax's post_finalization_callback: the manifest of the step being finalised, written
    into its temporary folder before orbax renames it (the final folder where orbax writes
    in place). Runs on the primary host only, after all hosts wrote their files."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.step: int | None = None

    def __call__(self) -> None:
        step, self.step = self.step, None
        if step is None:
            return
        tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        write_manifest(tmp[-1] if tmp else self.directory / str(step))


def manager(out_dir: str, keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
    """create=True: the writer (it holds out_dir's lock, watch/lock.py); create=False: a
    reader, which never removes a running writer's temporary folders (orbax's read_only
    would say so too, but logs three warnings per manager)."""
    directory = Path(out_dir).absolute()
    sealer = _Sealer(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        cleanup_tmp_directories=create,
        enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=sealer),
    )
    mngr = ocp.CheckpointManager(directory, options=options)
    mngr.jaxgpt_sealer = sealer  # save() names the step the callback seals
    return mngr


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> bool:
    """Start saving `state` and `meta` as checkpoint `step` (async: wait_until_finished);
    the manifest is written before the step folder appears (see the module docstring)."""
    mngr.wait_until_finished()  # the previous save's callback has run: one step in flight
    mngr.jaxgpt_sealer.step = step
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    started = mngr.save(step, args=args)
    if not started:
        mngr.jaxgpt_sealer.step = None
    faults.kill_in_save(step, mngr.directory)  # a test hook, off unless its env var is set
    return started


def steps(out_dir: str) -> list[int]:
    """The complete steps of out_dir, oldest first (orbax's step folders: digits only)."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def latest_step(out_dir: str) -> int | None:
    """The newest step folder, checked or not (an out_dir holding one holds a run)."""
    found = steps(out_dir)
    return found[-1] if found else None


def _problem(out_dir: str, step: int, sealed: list[int]) -> str | None:
    """Why step is not usable, or None (verified, or legacy: older than any manifest)."""
    step_dir = Path(out_dir) / str(step)
    if step not in sealed:
        older = [s for s in sealed if s < step]
        if older:
            return f"is incomplete (no {MANIFEST}, unlike checkpoint {older[-1]})"
        missing = [n for n in LEGACY_REQUIRED if not (step_dir / n).is_file()]
        return f"is incomplete ({missing[0]}: missing)" if missing else None
    why = damage(step_dir)
    return f"is damaged ({why})" if why else None


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(f"jaxgpt: {line}", file=sys.stderr, flush=True)


def _verdicts(out_dir: str):
    """(step, why it is not usable or None) for each step of out_dir, newest first, each
    checked only when the one after it was not usable."""
    found = steps(out_dir)
    sealed = [s for s in found if (Path(out_dir) / str(s) / MANIFEST).is_file()]
    for step in reversed(found):
        yield step, _problem(out_dir, step, sealed)


def verified_step(out_dir: str) -> int | None:
    """The newest usable step, found quietly; None when there is none."""
    return next((step for step, why in _verdicts(out_dir) if why is None), None)


def usable_step(out_dir: str, set_aside: bool = False) -> int:
    """The newest step of out_dir that verifies. Newer ones that do not are named in one
    line on stderr and left in place; set_aside (a resumed run, which saves those steps
    again) renames them to <step>.damaged in out_dir, which orbax ignores."""
    skipped, bad = [], []
    for step, why in _verdicts(out_dir):
        if why is None:
            break
        skipped.append(f"checkpoint {step}{'' if skipped else f' in {out_dir}'} {why}")
        bad.append(step)
    else:
        if not skipped:
            raise CheckpointError(f"no checkpoint in {out_dir}: train first or check --out_dir")
        raise CheckpointError(
            f"no usable checkpoint: {'; '.join(skipped)}; nothing was changed, "
            "train again into another --out_dir"
        )
    if skipped:
        kept = ""
        if set_aside:
            moved = _set_aside(out_dir, sorted(bad))
            kept = f" (kept as {', '.join(moved)})"
        _say(f"{'; '.join(skipped)}: using checkpoint {step}{kept}")
    return step


def _set_aside(out_dir: str, bad: list[int]) -> list[str]:
    """Rename the step folders `bad` so that a resumed run saves those steps anew."""
    names = []
    for step in bad:
        src = Path(out_dir) / str(step)
        dst, n = src.with_name(f"{step}{DAMAGED_SUFFIX}"), 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{step}{DAMAGED_SUFFIX}-{n}")
        if jax.process_index() == 0:
            os.replace(src, dst)
        names.append(dst.name)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxgpt-set-aside")
    return names


def _first_line(e: BaseException) -> str:
    if "TensorStore details" in str(e) and e.__cause__ is not None:  # orbax's wrapper
        return _first_line(e.__cause__)
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# what tensorstore's late callbacks raise into a closed asyncio loop (see _quiet_closed_loop)
CLOSED_LOOP = ("Event loop is closed", "cannot schedule new futures after")


def _late_read_failure(e: BaseException | None) -> bool:
    """An error from the reads of a failed restore that outlive it (see _quiet_closed_loop)."""
    if isinstance(e, RuntimeError) and str(e).startswith(CLOSED_LOOP):
        return True
    return isinstance(e, Exception) and ("TensorStore details" in str(e) or _read_error(e))


class _LateReadLogs(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of such reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _late_read_failure(record.exc_info[1]))


def _quiet_closed_loop() -> None:
    """orbax runs a restore in an asyncio loop of its own; when one read fails, the reads
    still in flight in tensorstore finish after that loop is closed, and each callback's
    RuntimeError goes to sys.unraisablehook as a traceback after the real error; the other
    failed reads, in coroutines and tasks orbax leaves unawaited, come back the same way or
    through asyncio's logger when their tasks are collected. orbax has no option to wait
    for them, so they are dropped here; nothing else is."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxgpt_quiet", False):
        return

    def hook(unraisable) -> None:
        if not _late_read_failure(unraisable.exc_value):
            previous(unraisable)

    hook.jaxgpt_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_LateReadLogs())


def _read_error(e: Exception) -> bool:
    """tensorstore's codes for bytes that are not what its metadata says."""
    text = f"{e} {e.__cause__}".lower()
    return any(code in text for code in ("data_loss", "out_of_range", "error reading"))


def _restore(out_dir: str, step: int | None, args, fit: str) -> tuple[int, dict]:
    """mngr.restore of `step` (the usable step when None), orbax's errors as one line; the
    manager is closed whatever happens (an open one prints asyncio tracebacks at exit)."""
    if step is None:
        step = usable_step(out_dir)
    checked = (Path(out_dir) / str(step) / MANIFEST).is_file()
    _quiet_closed_loop()
    mngr = manager(out_dir, create=False)
    try:
        return step, mngr.restore(step, args=args)
    except Exception as e:  # orbax and tensorstore raise many kinds: one line for the user
        if not checked and _read_error(e):
            what = f"is damaged (it has no {MANIFEST}, an older jaxgpt wrote it)"
        elif isinstance(e, (ValueError, KeyError)):
            # the files are the ones saved: another model saved them; a legacy step could
            # also be damaged in a way that reads as a mismatch, which nothing can tell
            damaged = "" if checked else f" or is damaged (it has no {MANIFEST} to tell)"
            what = f"does not {fit}{damaged}"
        else:
            what = f"cannot be read ({type(e).__name__})"
        raise CheckpointError(f"checkpoint {step} in {out_dir} {what}: {_first_line(e)}") from None
    finally:
        mngr.close()


def restore_meta(out_dir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, meta) of checkpoint `step`, by default the newest usable one."""
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    step, out = _restore(out_dir, step, args, "hold a jaxgpt run")
    return step, out["meta"]


def restore(out_dir: str, template, step: int | None = None) -> tuple[int, object, dict]:
    """(step, state, meta) of checkpoint `step` (by default the newest usable one),
    restored into `template`'s shapes and shardings (a concrete or abstract train state:
    any mesh works). Pass the step usable_step chose to read meta and state from one step."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    step, out = _restore(out_dir, step, args, "fit this model")
    return step, out["state"], out["meta"]


def model_config(meta: dict) -> GPTConfig:
    return from_dict(GPTConfig, meta["model"])


def restore_params(out_dir: str, abstract_params, step: int | None = None):
    """(step, params, meta) of checkpoint `step` (by default the newest usable one) without
    the optimizer state.

    abstract_params: ShapeDtypeStructs (with shardings) of the parameters.
    """
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    args = ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore(),
    )
    step, out = _restore(out_dir, step, args, "fit")
    return step, out["state"]["params"], out["meta"]
