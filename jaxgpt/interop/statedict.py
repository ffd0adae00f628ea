"""Weight conversion between jaxgpt parameters and PyTorch state_dicts (nanoGPT, HF GPT-2).

nanoGPT's names are `transformer.{wte,wpe,h.<i>.{ln_1,attn.c_attn,attn.c_proj,ln_2,
mlp.c_fc,mlp.c_proj},ln_f}` and `lm_head` (tied to wte), with nn.Linear weights stored
(out, in). jaxgpt stores kernels (in, out) and keeps attention heads as their own axes,
so each conversion is a rename, a transpose and a reshape. Hugging Face's GPT2LMHeadModel
uses the same names, but its Conv1D weights are already (in, out), GPT-2 always has
biases, and files saved from a bare GPT2Model lack the `transformer.` prefix.

Model configs map too: nanoGPT's `model_args` and HF's `config.json` <-> GPTConfig. Arrays
are numpy float32 here; torch is not needed to convert.

The model options after nanoGPT map to the state_dict of torch_ref.py (which has them):
c_attn's rows are q, k, v with query head j * G + i of key/value head j (jaxgpt's
(C, G + 2, n_kv_head, hs) kernel swaps its first two axes), a SwiGLU c_fc's rows are gate
then up, q_norm/k_norm live under attn, an untied head is `lm_head.weight`, and there is
no wpe with rotary embeddings. nanoGPT's own model.py has none of them: `nanogpt_options`
names what a ckpt.pt cannot hold.
"""

import dataclasses
import math

import numpy as np

from jaxgpt.config import ConfigError, GPTConfig
from jaxgpt.interop.bundle import ConvertError
from jaxgpt.model import stack_layers, unstack_layers


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: copy, never alias the torch model's memory
        return x.detach().cpu().float().numpy().copy()
    return np.asarray(x, dtype=np.float32)


def _linear_pairs(config: GPTConfig, i: int) -> list[tuple[str, str, tuple, tuple, tuple]]:
    """Block i's linears: (jaxgpt path, nanoGPT prefix, jaxgpt kernel shape, jaxgpt bias
    shape, (in, out) matrix shape)."""
    C, nh, nkv, hs, H = (config.n_embd, config.n_head, config.kv_heads, config.head_size,
                         config.hidden_size)  # fmt: skip
    G, fc = nh // nkv, (2, H) if config.mlp == "swiglu" else (H,)
    qkv = (G + 2, nkv, hs)
    j, t = f"h_{i}", f"transformer.h.{i}"
    return [
        (f"{j}/attn/c_attn", f"{t}.attn.c_attn", (C, *qkv), qkv, (C, (nh + 2 * nkv) * hs)),
        (f"{j}/attn/c_proj", f"{t}.attn.c_proj", (nh, hs, C), (C,), (C, C)),
        (f"{j}/mlp/c_fc", f"{t}.mlp.c_fc", (C, *fc), fc, (C, math.prod(fc))),
        (f"{j}/mlp/c_proj", f"{t}.mlp.c_proj", (H, C), (C,), (H, C)),
    ]


def _norm_pairs(config: GPTConfig) -> list[tuple[str, str, int]]:
    """Every norm: (jaxgpt path, nanoGPT prefix, features)."""
    C, hs = config.n_embd, config.head_size
    pairs = [("ln_f", "transformer.ln_f", C)]
    for i in range(config.n_layer):
        j, t = f"h_{i}", f"transformer.h.{i}"
        pairs += [(f"{j}/ln_1", f"{t}.ln_1", C), (f"{j}/ln_2", f"{t}.ln_2", C)]
        if config.qk_norm:
            pairs += [(f"{j}/attn/q_norm", f"{t}.attn.q_norm", hs)]
            pairs += [(f"{j}/attn/k_norm", f"{t}.attn.k_norm", hs)]
    return pairs


def _norm_params(config: GPTConfig, path: str) -> tuple[str, ...]:
    """The parameters of a norm: LayerNorm's scale and bias, RMSNorm's scale, either
    without its scale when norm_scale=False (q_norm and k_norm: config.qk_gain)."""
    qk = path.endswith(("q_norm", "k_norm"))
    scale = config.qk_gain if qk else config.norm_scale
    rms = config.norm == "rmsnorm" or qk
    return (("scale",) if scale else ()) + (() if rms or not config.bias else ("bias",))


TORCH_NORM_NAMES = {"scale": "weight", "bias": "bias"}


def _qkv_to_torch(x: np.ndarray, config: GPTConfig) -> np.ndarray:
    """c_attn's kernel (C, G + 2, nkv, hs) or bias (G + 2, nkv, hs) -> torch_ref's rows
    flattened (C, out) or (out,): q with query head j * G + i of kv head j, then k, v."""
    G, lead = config.n_head // config.kv_heads, x.shape[:-3]
    q = np.swapaxes(x[..., :G, :, :], -3, -2)  # (..., nkv, G, hs)
    return np.concatenate([q.reshape(*lead, -1), x[..., G:, :, :].reshape(*lead, -1)], -1)


def _qkv_from_torch(x: np.ndarray, config: GPTConfig) -> np.ndarray:
    """The inverse of _qkv_to_torch: (..., out) -> (..., G + 2, nkv, hs)."""
    G, nkv, hs = config.n_head // config.kv_heads, config.kv_heads, config.head_size
    lead, n_q = x.shape[:-1], config.n_head * hs
    q = np.swapaxes(x[..., :n_q].reshape(*lead, nkv, G, hs), -3, -2)  # (..., G, nkv, hs)
    return np.concatenate([q, x[..., n_q:].reshape(*lead, 2, nkv, hs)], axis=-3)


def _get(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _put(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def to_nanogpt(params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """jaxgpt parameters (per-layer or scan-stacked) -> nanoGPT state_dict arrays
    (lm_head.weight shares wte)."""
    if "h" in params:  # scan_layers=True
        params = unstack_layers(params)
    sd = {"transformer.wte.weight": _np(params["wte"]["embedding"])}
    if config.pos_encoding == "learned":
        sd["transformer.wpe.weight"] = _np(params["wpe"]["embedding"])
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    else:
        sd["lm_head.weight"] = np.ascontiguousarray(_np(params["lm_head"]["kernel"]).T)
    for i in range(config.n_layer):
        for path, prefix, _, _, matrix in _linear_pairs(config, i):
            layer = _get(params, path)
            kernel, bias = _np(layer["kernel"]), _np(layer["bias"]) if config.bias else None
            if path.endswith("c_attn"):
                kernel = _qkv_to_torch(kernel, config)
                bias = _qkv_to_torch(bias, config) if config.bias else None
            sd[f"{prefix}.weight"] = np.ascontiguousarray(kernel.reshape(matrix).T)  # (out, in)
            if config.bias:
                sd[f"{prefix}.bias"] = bias.reshape(-1)
    for path, prefix, _ in _norm_pairs(config):
        for name in _norm_params(config, path):
            sd[f"{prefix}.{TORCH_NORM_NAMES[name]}"] = _np(_get(params, path)[name])
    return sd


def strip_prefix(state_dict: dict) -> dict:
    """Drop torch.compile's `_orig_mod.` prefix, as nanoGPT's train.py does on resume."""
    return {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}


def from_nanogpt(state_dict: dict, config: GPTConfig) -> dict:
    """nanoGPT state_dict (torch tensors or arrays) -> jaxgpt parameters (numpy float32),
    stacked under `h` when config.scan_layers.

    Raises ConvertError naming the first missing key or mismatched shape, or an lm_head
    that is not tied to wte.
    """
    sd = strip_prefix(state_dict)

    def take(key: str, shape: tuple) -> np.ndarray:
        if key not in sd:
            raise ConvertError(f"missing key {key}")
        value = _np(sd[key])
        if value.shape != tuple(shape):
            raise ConvertError(
                f"{key} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                f"for {_describe(config)}"
            )
        return value

    C, V, T = config.n_embd, config.vocab_size, config.block_size
    params: dict = {"wte": {"embedding": take("transformer.wte.weight", (V, C))}}
    if config.pos_encoding == "learned":
        params["wpe"] = {"embedding": take("transformer.wpe.weight", (T, C))}
    for i in range(config.n_layer):
        for path, prefix, kshape, bshape, (n_in, n_out) in _linear_pairs(config, i):
            kernel = np.ascontiguousarray(take(f"{prefix}.weight", (n_out, n_in)).T)
            bias = take(f"{prefix}.bias", (n_out,)) if config.bias else None
            if path.endswith("c_attn"):
                kernel = _qkv_from_torch(kernel, config)
                bias = _qkv_from_torch(bias, config) if config.bias else None
            layer = {"kernel": kernel.reshape(kshape)}
            if config.bias:
                layer["bias"] = bias.reshape(bshape)
            _put(params, path, layer)
    for path, prefix, n in _norm_pairs(config):
        names = _norm_params(config, path)
        if names:
            _put(params, path, {k: take(f"{prefix}.{TORCH_NORM_NAMES[k]}", (n,)) for k in names})
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(take("lm_head.weight", (V, C)).T)}
    elif "lm_head.weight" in sd and not np.array_equal(
        _np(sd["lm_head.weight"]), params["wte"]["embedding"]
    ):
        raise ConvertError("lm_head.weight differs from transformer.wte.weight: not a tied GPT")
    return stack_layers(params) if config.scan_layers else params


def _describe(config: GPTConfig) -> str:
    return (
        f"n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
        f"block_size={config.block_size}, vocab_size={config.vocab_size}, bias={config.bias}"
    )


# Hugging Face GPT-2: Conv1D weights are stored (in, out), nanoGPT's nn.Linear (out, in)
HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older GPT-2 files


def hf_to_nanogpt(state_dict: dict) -> dict:
    """HF GPT-2 state_dict (GPT2LMHeadModel or bare GPT2Model names) -> nanoGPT's names and
    layout. Arrays are views where possible, so multi-GB checkpoints are not copied."""
    sd = {}
    for key, value in state_dict.items():
        if key.endswith(HF_BUFFERS):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        sd[key] = _np(value).T if key.endswith(HF_CONV1D) else value
    return sd


def nanogpt_to_hf(state_dict: dict) -> dict:
    """nanoGPT state_dict -> GPT2LMHeadModel's, without the tied lm_head (as HF saves it)."""
    return {
        k: np.ascontiguousarray(_np(v).T) if k.endswith(HF_CONV1D) else _np(v)
        for k, v in strip_prefix(state_dict).items()
        if k != "lm_head.weight"
    }


def from_hf(state_dict: dict, config: GPTConfig) -> dict:
    """HF GPT-2 state_dict -> jaxgpt parameters (numpy float32); config.bias must be True."""
    return from_nanogpt(hf_to_nanogpt(state_dict), config)


def to_hf(params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """jaxgpt parameters -> HF GPT-2 state_dict. GPT-2 always has biases: a bias=False model
    gets zero biases, which computes the same function."""
    sd = to_nanogpt(params, config)
    if not config.bias:
        zeros = {f"{p}.bias": np.zeros(n_out, np.float32) for p, (_, n_out) in _all_linears(config)}
        zeros.update(
            {
                f"{prefix}.bias": np.zeros(config.n_embd, np.float32)
                for _, prefix, _ in _norm_pairs(config)
            }
        )
        sd.update(zeros)
    return nanogpt_to_hf(sd)


def _all_linears(config: GPTConfig):
    for i in range(config.n_layer):
        for _, prefix, _, _, matrix in _linear_pairs(config, i):
            yield prefix, matrix


def nanogpt_param_names(config: GPTConfig) -> list[str]:
    """nanoGPT's parameter names in `named_parameters()` order (the tied lm_head is wte):
    the order torch's AdamW numbers them in, within each weight-decay group."""
    b = [".bias"] if config.bias else []
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(config.n_layer):
        t = f"transformer.h.{i}"
        for layer in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += [f"{t}.{layer}{suffix}" for suffix in [".weight"] + b]
    return names + [f"transformer.ln_f{suffix}" for suffix in [".weight"] + b]


def is_matrix(name: str) -> bool:
    """nanoGPT decays every >= 2-D parameter: embeddings and Linear weights."""
    return name.endswith(".weight") and ".ln_" not in name


def nanogpt_options(config: GPTConfig) -> list[str]:
    """The options after nanoGPT that `config` sets (`key=value`): what nanoGPT's model.py,
    and so a ckpt.pt, cannot hold."""
    default = GPTConfig()
    keys = ("pos_encoding", "rope_theta", "norm", "norm_eps", "norm_scale", "mlp", "mlp_hidden")
    keys += ("qk_norm", "qk_norm_scale", "n_kv_head", "tie_embeddings", "logit_softcap")
    keys += ("zero_init_proj",)
    changed = [k for k in keys if getattr(config, k) != getattr(default, k)]
    same = {  # settings that leave nanoGPT's function as it is
        "zero_init_proj": True,  # an init, not a different model
        "n_kv_head": config.kv_heads == config.n_head,
        "mlp_hidden": config.hidden_size == 4 * config.n_embd,
        "rope_theta": config.pos_encoding == "learned",
        "qk_norm_scale": not config.qk_norm,
    }
    return [f"{k}={getattr(config, k)}" for k in changed if not same.get(k, False)]


# model configs: nanoGPT's model_args and HF's config.json
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def model_args(config: GPTConfig) -> dict:
    """nanoGPT's `model_args` for a checkpoint."""
    return {k: getattr(config, k) for k in MODEL_ARGS}


def config_from_model_args(args: dict) -> GPTConfig:
    missing = [k for k in MODEL_ARGS if k != "dropout" and k not in args]
    if missing:
        raise ConvertError(f"model_args lacks {', '.join(missing)}")
    try:
        return GPTConfig(**{k: args[k] for k in MODEL_ARGS if k in args})
    except (ConfigError, TypeError) as e:
        raise ConvertError(f"model_args do not describe a GPT: {e}") from None


# transformers' GPT-2 activations: the exact GELU, and three forms of the tanh approximation
GELUS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


def gpt2_options(config: GPTConfig) -> list[str]:
    """The options `config` sets that GPT2LMHeadModel cannot hold (`key=value`): nanoGPT's,
    less what GPT-2's config.json has (the tanh GELU, the norm epsilon, the MLP width)."""
    mlp = "gelu" if config.mlp == "gelu_tanh" else config.mlp
    return nanogpt_options(dataclasses.replace(config, mlp=mlp, norm_eps=1e-5, mlp_hidden=0))


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig from a GPT-2 `config.json`; what jaxgpt cannot compute is refused.

    activation_function picks the MLP: gelu is the exact GELU (nanoGPT's), gelu_new (the
    default, what GPT-2 was trained with), gelu_pytorch_tanh and gelu_fast the tanh one.
    """
    if hf.get("model_type") != "gpt2":
        raise ConvertError(f"config.json has model_type={hf.get('model_type')!r}, not gpt2")
    activation = hf.get("activation_function", "gelu_new")
    checks = {
        "activation_function": activation in GELUS,
        "scale_attn_weights": hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": not hf.get("scale_attn_by_inverse_layer_idx", False),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConvertError(f"config.json: {key}={hf.get(key)!r} is not supported by jaxgpt")
    try:
        n_inner = hf.get("n_inner") or 0
        return GPTConfig(
            block_size=hf["n_positions"],
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            bias=True,
            mlp=GELUS[activation],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp_hidden=0 if n_inner == 4 * hf["n_embd"] else n_inner,
        )
    except KeyError as e:
        raise ConvertError(f"config.json lacks {e.args[0]}") from None
    except (ConfigError, TypeError) as e:
        raise ConvertError(f"config.json: {e}") from None


def hf_config(config: GPTConfig) -> dict:
    """A GPT-2 `config.json` for a jaxgpt model without gpt2_options: the activation it
    computes (gelu: exact, gelu_new: tanh), so transformers computes jaxgpt's logits."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden or None,
        "activation_function": "gelu_new" if config.mlp == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "dtype": "float32",
    }
