"""nanoGPT checkpoints: read a `ckpt.pt` into jaxgpt's layout and write one from it.

A nanoGPT checkpoint is a torch pickle of `model` (the state_dict, `_orig_mod.`-prefixed
when saved from a compiled model), `optimizer` (torch AdamW's state_dict), `model_args`,
`iter_num`, `best_val_loss` and `config` (train.py's globals). AdamW's exp_avg/exp_avg_sq
are renamed and reshaped like the weights, so a converted run resumes with its optimizer
state. The vocabulary of a character model lives in nanoGPT's `meta.pkl` (stoi/itos);
without one GPT-2's BPE is assumed, as nanoGPT's sample.py does. Needs the `torch` extra.
"""

import dataclasses
import pickle
from pathlib import Path

import numpy as np

from jaxgpt.config import ConfigError, TrainConfig, apply_overrides, from_dict, to_dict
from jaxgpt.interop.bundle import Bundle, ConvertError, Moments
from jaxgpt.interop.statedict import (
    config_from_model_args,
    from_nanogpt,
    is_matrix,
    model_args,
    nanogpt_options,
    nanogpt_param_names,
    to_nanogpt,
)
from jaxgpt.prep.tokenizer import BPETokenizer

NANOGPT_INIT_BEST = 1e9  # nanoGPT's best_val_loss before any evaluation


def ckpt_path(path, must_exist: bool = True) -> Path:
    """nanoGPT's out_dir or the ckpt.pt in it."""
    path = Path(path)
    if path.is_dir() or (not must_exist and path.suffix != ".pt"):
        path = path / "ckpt.pt"
    if must_exist and not path.is_file():
        raise ConvertError(f"no nanoGPT checkpoint at {path}")
    return path


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("nanoGPT checkpoints need torch: pip install 'jaxgpt[torch]'") from None
    return torch


def load(path, meta_path: str | None = None) -> Bundle:
    """A nanoGPT ckpt.pt (and optionally its meta.pkl) -> Bundle."""
    torch = _torch()
    path = ckpt_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a zip/pickle, or objects outside plain data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ConvertError(f"{path} is not a PyTorch checkpoint: {first}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ConvertError(f"{path} is not a nanoGPT checkpoint (no 'model' and 'model_args')")
    config = config_from_model_args(ckpt["model_args"])
    try:
        params = from_nanogpt(ckpt["model"], config)
    except ConvertError as e:
        raise ConvertError(f"{path}: {e}") from None
    meta_path = meta_path or _meta_beside(path)
    tokenizer = read_meta(meta_path) if meta_path else _bpe_for(config, path)
    if tokenizer["vocab_size"] > config.vocab_size:
        raise ConvertError(
            f"{meta_path} has {tokenizer['vocab_size']} characters but the model "
            f"vocab_size is {config.vocab_size}"
        )
    bundle = Bundle(params, config, tokenizer, run=_run_config(ckpt.get("config", {}), config))
    bundle.iter_num = int(ckpt.get("iter_num", 0))
    best = float(ckpt.get("best_val_loss", float("inf")))
    bundle.best_val_loss = float("inf") if best >= NANOGPT_INIT_BEST else best
    if "optimizer" in ckpt:
        try:
            bundle.moments = moments_from_torch(ckpt["optimizer"], config)
        except ConvertError as e:
            bundle.notes.append(f"optimizer state not converted ({e}); resume starts AdamW afresh")
    if meta_path:
        bundle.notes.append(f"character vocabulary from {meta_path}")
    return bundle


def _meta_beside(path: Path) -> str | None:
    meta = path.parent / "meta.pkl"
    return str(meta) if meta.is_file() else None


def _bpe_for(config, path: Path) -> dict:
    if config.vocab_size < BPETokenizer.vocab_size:
        raise ConvertError(
            f"{path} has vocab_size {config.vocab_size}, too small for GPT-2's BPE: "
            "pass --meta path/to/meta.pkl (its character vocabulary)"
        )
    return {"kind": "bpe", "encoding": "gpt2", "vocab_size": BPETokenizer.vocab_size}


def read_meta(meta_path: str) -> dict:
    """nanoGPT's meta.pkl ({vocab_size, itos, stoi}) -> a character tokenizer meta."""
    path = Path(meta_path)
    if not path.is_file():
        raise ConvertError(f"--meta {meta_path}: no such file")
    try:
        with open(path, "rb") as f:
            meta = pickle.load(f)
        itos = meta["itos"]
        chars = [itos[i] for i in range(len(itos))]
    except Exception as e:  # the user's pickle: any failure is the wrong kind of file
        raise ConvertError(f"{meta_path} is not nanoGPT's meta.pkl ({type(e).__name__})") from None
    if not all(isinstance(c, str) for c in chars):
        raise ConvertError(f"{meta_path}: itos must map ids to characters")
    return {"kind": "char", "vocab_size": len(chars), "chars": chars}


def write_meta(tokenizer: dict, path: Path) -> None:
    chars = tokenizer["chars"]
    meta = {
        "vocab_size": len(chars),
        "itos": dict(enumerate(chars)),
        "stoi": {c: i for i, c in enumerate(chars)},
    }
    with open(path, "wb") as f:
        pickle.dump(meta, f)


def _run_config(nanogpt_config: dict, config) -> dict:
    """nanoGPT's train.py globals -> TrainConfig fields (keys jaxgpt lacks are dropped)."""
    cfg = TrainConfig()
    try:  # all at once: keys checked against each other (warmup_iters <= lr_decay_iters)
        cfg = apply_overrides(cfg, {k: v for k, v in nanogpt_config.items() if k in to_dict(cfg)})
    except ConfigError:  # else each key that fits on its own
        for key, value in nanogpt_config.items():
            try:
                cfg = apply_overrides(cfg, {key: value})
            except ConfigError:
                continue
    if not nanogpt_config:  # no run config saved: describe the model
        cfg = dataclasses.replace(cfg, **{k: getattr(config, k) for k in _SHAPE})
    return to_dict(cfg)


_SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout")


def _adamw_order(config) -> tuple[list[str], int]:
    """Parameter names in the order nanoGPT's configure_optimizers numbers them: the
    weight-decay group (>= 2-D) first, then the rest. Returns (names, size of group 0)."""
    names = nanogpt_param_names(config)
    decay = [n for n in names if is_matrix(n)]
    return decay + [n for n in names if not is_matrix(n)], len(decay)


def moments_from_torch(optimizer: dict, config) -> Moments:
    """torch AdamW state_dict (nanoGPT's two groups) -> Moments in jaxgpt's layout."""
    order, n_decay = _adamw_order(config)
    groups, state = optimizer.get("param_groups", []), optimizer.get("state", {})
    sizes = [len(g["params"]) for g in groups]
    if sizes != [n_decay, len(order) - n_decay]:
        raise ConvertError(
            f"param groups of sizes {sizes}, expected {[n_decay, len(order) - n_decay]}"
        )
    ids = [i for g in groups for i in g["params"]]
    missing = [i for i in ids if "exp_avg" not in state.get(i, {})]
    if missing:
        raise ConvertError(f"no exp_avg for {len(missing)} parameters")
    mu = {name: state[i]["exp_avg"] for name, i in zip(order, ids)}
    nu = {name: state[i]["exp_avg_sq"] for name, i in zip(order, ids)}
    count = int(state[ids[0]]["step"])
    return Moments(from_nanogpt(mu, config), from_nanogpt(nu, config), count)


def moments_to_torch(moments: Moments, config, run: TrainConfig) -> dict:
    """Moments -> a state_dict torch's AdamW (nanoGPT's configure_optimizers) loads."""
    torch = _torch()
    order, n_decay = _adamw_order(config)
    mu, nu = to_nanogpt(moments.mu, config), to_nanogpt(moments.nu, config)
    step = torch.tensor(float(moments.count))
    state = {
        i: {"step": step.clone(), "exp_avg": _tensor(mu[n]), "exp_avg_sq": _tensor(nu[n])}
        for i, n in enumerate(order)
    }
    # every option of this torch's AdamW (decoupled_weight_decay included), nanoGPT's values
    defaults = torch.optim.AdamW(
        [torch.zeros(1)], lr=run.learning_rate, betas=(run.beta1, run.beta2)
    ).defaults
    groups = [
        dict(defaults, weight_decay=run.weight_decay, params=list(range(n_decay))),
        dict(defaults, weight_decay=0.0, params=list(range(n_decay, len(order)))),
    ]
    return {"state": state, "param_groups": groups}


def _tensor(x):
    return _torch().from_numpy(np.array(x, dtype=np.float32))


def save(bundle: Bundle, dst) -> Path:
    """Write a ckpt.pt that nanoGPT's sample.py and train.py (init_from='resume') load;
    a character vocabulary goes beside it as meta.pkl."""
    torch = _torch()
    options = nanogpt_options(bundle.config)
    if options:
        raise ConvertError(
            f"nanoGPT's model has no {', '.join(options)}: export this model --to hf or keep it"
        )
    path = ckpt_path(dst, must_exist=False)
    if path.exists():
        raise ConvertError(f"{path} already exists; choose another destination")
    run = from_dict(TrainConfig, bundle.run) if bundle.run else TrainConfig()
    sd = {k: _tensor(v) for k, v in to_nanogpt(bundle.params, bundle.config).items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as in nanoGPT's model
    best = bundle.best_val_loss if np.isfinite(bundle.best_val_loss) else NANOGPT_INIT_BEST
    ckpt = {
        "model": sd,
        "model_args": model_args(bundle.config),
        "iter_num": bundle.iter_num,
        "best_val_loss": torch.tensor(best),
        "config": to_dict(run),
    }
    if bundle.moments is not None:
        ckpt["optimizer"] = moments_to_torch(bundle.moments, bundle.config, run)
    if bundle.opt_state is not None:
        bundle.notes.append("Muon's optimizer state is not carried: ckpt.pt holds AdamW's only")
    path.parent.mkdir(parents=True, exist_ok=True)
    if bundle.tokenizer.get("kind") == "char":
        write_meta(bundle.tokenizer, path.parent / "meta.pkl")
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path
