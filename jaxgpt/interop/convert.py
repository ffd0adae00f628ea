"""`jaxgpt convert`: read a model in one format, write it in another.

Formats: `jaxgpt` (an out_dir of orbax checkpoints, see checkpoint.py), `hf` (a Hugging
Face GPT-2 or Llama directory, see hf.py) and `nanogpt` (a ckpt.pt, see nanogpt.py). Every
reader returns a Bundle (bundle.py): the parameters in jaxgpt's layout with the config and
tokenizer, and the run's progress and AdamW state where the format has them (an
optimizer=muon state goes only from one jaxgpt checkpoint to another). A jaxgpt checkpoint
written here is one `jaxgpt sample --out_dir` and `jaxgpt train --init_from=resume` take.
Nothing is written over: a destination that is a file or a folder with files in it is
refused before the source is read.
"""

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt import checkpoint, train
from jaxgpt.config import ARCH_KEYS, TrainConfig, from_dict, to_dict
from jaxgpt.interop.bundle import FORMATS, Bundle, ConvertError, Moments
from jaxgpt.model import abstract_params, stack_layers, unbox, unstack_layers


def read(kind: str, src: str, meta: str | None = None) -> Bundle:
    if meta and kind != "nanogpt":
        raise ConvertError("--meta is nanoGPT's meta.pkl: use it with --from nanogpt")
    if kind == "hf":
        from jaxgpt.interop import hf

        return hf.load(src)  # a directory, or a GPT-2 name on the hub
    if kind == "nanogpt":
        from jaxgpt.interop import nanogpt

        return nanogpt.load(src, meta)
    if kind == "jaxgpt":
        return load_checkpoint(src)
    raise ConvertError(f"unknown format {kind!r}: use one of {', '.join(FORMATS)}")


def write(bundle: Bundle, kind: str, dst: str) -> tuple[Path, bool]:
    """Write bundle as `kind` at dst; returns (the path written, whether an optimizer state
    was written with the weights)."""
    if kind == "hf":
        from jaxgpt.interop import hf

        return hf.save_dir(bundle, dst), False  # a HF directory holds the model only
    if kind == "nanogpt":
        from jaxgpt.interop import nanogpt

        return nanogpt.save(bundle, dst), bundle.moments is not None  # torch AdamW's only
    if kind == "jaxgpt":
        return save_checkpoint(bundle, dst)
    raise ConvertError(f"unknown format {kind!r}: use one of {', '.join(FORMATS)}")


def check_destination(kind: str, dst: str) -> None:
    """Nothing is written over: dst must be a new or empty folder, or for nanogpt a new
    ckpt.pt path with no meta.pkl beside it. Checked before the source is read."""
    path = Path(dst)
    if kind == "nanogpt" and path.suffix == ".pt" and not path.is_dir():
        for existing in (path, path.parent / "meta.pkl"):
            if existing.exists():
                raise ConvertError(f"{existing} already exists; choose another destination")
        path = path.parent  # may hold other files
        if path.exists() and not path.is_dir():
            raise ConvertError(f"{path} is a file, not a folder; choose another destination")
        return
    if path.exists() and not path.is_dir():
        raise ConvertError(f"destination {dst} is a file, not a folder; choose a new folder")
    if path.is_dir() and any(path.iterdir()):
        n = sum(1 for _ in path.iterdir())
        raise ConvertError(
            f"destination {dst} already holds {n} file(s); choose a new or empty folder"
        )


def convert(src_kind: str, src: str, dst_kind: str, dst: str, meta: str | None = None):
    """Read src, write dst; returns (the Bundle, the path written)."""
    return convert_reporting(src_kind, src, dst_kind, dst, meta)[:2]


def convert_reporting(src_kind: str, src: str, dst_kind: str, dst: str, meta: str | None = None):
    """convert, also returning whether an optimizer state was written with the weights."""
    for kind in (src_kind, dst_kind):
        if kind not in FORMATS:
            raise ConvertError(f"unknown format {kind!r}: use one of {', '.join(FORMATS)}")
    check_destination(dst_kind, dst)
    bundle = read(src_kind, src, meta)
    return bundle, *write(bundle, dst_kind, dst)


def _is_part(s) -> bool:
    """The optax states that hold AdamW's averages and counts (see train.make_optimizer)."""
    return isinstance(s, (optax.ScaleByAdamState, optax.ScaleByScheduleState))


def with_moments(opt_state, moments: Moments, iter_num: int):
    """jaxgpt's optax state (make_optimizer) with AdamW's averages and counts set: the
    Adam count from the source's step, the schedule's from iter_num (as nanoGPT's lr)."""

    def fix(s):
        if isinstance(s, optax.ScaleByAdamState):
            mu = jax.tree.map(jnp.asarray, moments.mu)
            nu = jax.tree.map(jnp.asarray, moments.nu)
            return s._replace(count=jnp.asarray(moments.count, s.count.dtype), mu=mu, nu=nu)
        if isinstance(s, optax.ScaleByScheduleState):
            return s._replace(count=jnp.asarray(iter_num, s.count.dtype))
        return s

    return jax.tree.map(fix, opt_state, is_leaf=_is_part)


def moments_of(opt_state) -> Moments | None:
    parts = jax.tree.leaves(opt_state, is_leaf=_is_part)
    adam = [s for s in parts if isinstance(s, optax.ScaleByAdamState)]
    if not adam:
        return None
    mu, nu = (unstack_layers(jax.tree.map(np.asarray, t)) for t in (adam[0].mu, adam[0].nu))
    return Moments(mu, nu, int(adam[0].count))


def load_checkpoint(out_dir: str) -> Bundle:
    """The newest verified jaxgpt checkpoint in out_dir, with its optimizer state when it fits the
    saved run config's optimizer."""
    step = checkpoint.usable_step(out_dir)  # everything from one verified step
    _, meta = checkpoint.restore_meta(out_dir, step)
    config = checkpoint.model_config(meta)
    run = from_dict(TrainConfig, meta["config"])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tx = train.make_optimizer(run)
    abstract = jax.eval_shape(lambda: train.init_state(unbox(abstract_params(config)), tx))
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    moments = opt_state = None
    try:
        _, state, _ = checkpoint.restore(out_dir, abstract, step)
        params = state.params
        if run.optimizer == "adamw":
            moments = moments_of(state.opt_state)
        else:  # Muon's state (and its AdamW group's): only jaxgpt's optimizer reads it
            opt_state = jax.tree.map(np.asarray, state.opt_state)
    except checkpoint.CheckpointError:
        _, params, _ = checkpoint.restore_params(out_dir, abstract.params, step)
    params = unstack_layers(jax.tree.map(np.asarray, params))
    best = meta.get("best_val_loss", math.inf)
    return Bundle(
        params=params,
        config=config,
        tokenizer=meta["tokenizer"],
        run=meta["config"],
        iter_num=int(meta.get("iter_num", 0)),
        best_val_loss=float(best) if best is not None else math.inf,
        moments=moments,
        opt_state=opt_state,
    )


def _run_for(bundle: Bundle, out_dir: str) -> TrainConfig:
    """The run config saved with a converted checkpoint: the source's, else one that
    describes the model."""
    if bundle.run:
        run = from_dict(TrainConfig, bundle.run)
    else:
        run = TrainConfig(**{k: getattr(bundle.config, k) for k in (*ARCH_KEYS, "dropout")})
    return dataclasses.replace(run, out_dir=str(out_dir), init_from="resume")


def _same_shapes(a, b) -> bool:
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    return jax.tree.structure(a) == jax.tree.structure(b) and shapes(a) == shapes(b)


def save_checkpoint(bundle: Bundle, out_dir: str) -> tuple[Path, bool]:
    """Write bundle as checkpoint iter_num of a jaxgpt out_dir; returns (out_dir, whether
    the source's optimizer state went with it; else the state is a fresh one)."""
    if checkpoint.latest_step(out_dir) is not None:
        raise ConvertError(f"{out_dir} already holds a checkpoint; choose an empty folder")
    run = _run_for(bundle, out_dir)
    config = bundle.config
    params = bundle.params
    if config.scan_layers:
        params = stack_layers(params)
    tx = train.make_optimizer(run)
    state = train.init_state(jax.tree.map(jnp.asarray, params), tx)
    state = state.replace(step=jnp.asarray(bundle.iter_num, jnp.int32))
    carried = False
    if bundle.opt_state is not None and _same_shapes(bundle.opt_state, state.opt_state):
        state = state.replace(opt_state=jax.tree.map(jnp.asarray, bundle.opt_state))
        carried = True
    elif bundle.opt_state is not None:
        bundle.notes.append("the optimizer state does not fit this model's layout: not carried")
    elif bundle.moments is not None:
        carried = True
        moments = bundle.moments
        if config.scan_layers:
            moments = Moments(
                stack_layers(moments.mu),
                stack_layers(moments.nu),
                moments.count,
            )
        state = state.replace(opt_state=with_moments(state.opt_state, moments, bundle.iter_num))
    meta = {
        "config": to_dict(run),
        "model": to_dict(config),
        "tokenizer": bundle.tokenizer,
        "iter_num": bundle.iter_num,
        "best_val_loss": bundle.best_val_loss,
    }
    mngr = checkpoint.manager(out_dir, keep=run.keep_checkpoints)
    checkpoint.save(mngr, bundle.iter_num, state, meta)
    mngr.wait_until_finished()
    mngr.close()
    return Path(out_dir), carried
