"""Checkpoints in out_dir through orbax's CheckpointManager.

Each checkpoint is a step folder holding the train state (sharded arrays, restorable onto
any mesh) and a JSON `meta` item: the run config, the model config, the tokenizer, the
best validation loss so far. orbax writes a step into a temporary folder and renames it
when complete, so a run killed mid-save never leaves a checkpoint that loads wrongly;
temporary leftovers are removed when the manager opens.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxgpt.config import GPTConfig, from_dict
from jaxgpt.watch import faults


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for; printed as one line, exit 2."""


def manager(out_dir: str, keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
    """create=True: the writer (it holds out_dir's lock, watch/lock.py); create=False: a
    reader, which never removes a running writer's temporary folders (orbax's read_only
    would say so too, but logs three warnings per manager)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        cleanup_tmp_directories=create,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(Path(out_dir).absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> bool:
    """Start saving `state` and `meta` as checkpoint `step` (async: wait_until_finished)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    started = mngr.save(step, args=args)
    faults.kill_in_save(step, mngr.directory)  # a test hook, off unless its env var is set
    return started


def latest_step(out_dir: str) -> int | None:
    if not Path(out_dir).is_dir():
        return None
    mngr = manager(out_dir, create=False)
    step = mngr.latest_step()
    mngr.close()
    return step


def _require(out_dir: str) -> tuple[ocp.CheckpointManager, int]:
    step = latest_step(out_dir)
    if step is None:
        raise CheckpointError(f"no checkpoint in {out_dir}: train first or check --out_dir")
    return manager(out_dir, create=False), step


def restore_meta(out_dir: str) -> tuple[int, dict]:
    """(step, meta) of the latest checkpoint in out_dir."""
    mngr, step = _require(out_dir)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{out_dir} step {step} is no jaxgpt checkpoint: {first}") from None
    finally:
        mngr.close()
    return step, meta


def restore(out_dir: str, template) -> tuple[int, object, dict]:
    """(step, state, meta) of the latest checkpoint, restored into `template`'s shapes and
    shardings (a concrete or abstract train state: any mesh works)."""
    mngr, step = _require(out_dir)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    try:
        out = mngr.restore(step, args=args)
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {out_dir} step {step} does not fit this model: {first}"
        ) from None
    finally:
        mngr.close()
    return step, out["state"], out["meta"]


def model_config(meta: dict) -> GPTConfig:
    return from_dict(GPTConfig, meta["model"])


def restore_params(out_dir: str, abstract_params) -> tuple[int, dict, dict]:
    """(step, params, meta) of the latest checkpoint without the optimizer state.

    abstract_params: ShapeDtypeStructs (with shardings) of the parameters.
    """
    mngr, step = _require(out_dir)
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    args = ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore(),
    )
    try:
        out = mngr.restore(step, args=args)
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {out_dir} step {step} does not fit: {first}") from None
    finally:
        mngr.close()
    return step, out["state"]["params"], out["meta"]
