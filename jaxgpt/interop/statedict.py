"""Weight conversion between jaxgpt parameters and PyTorch state_dicts (nanoGPT, HF GPT-2).

nanoGPT's names are `transformer.{wte,wpe,h.<i>.{ln_1,attn.c_attn,attn.c_proj,ln_2,
mlp.c_fc,mlp.c_proj},ln_f}` and `lm_head` (tied to wte), with nn.Linear weights stored
(out, in). jaxgpt stores kernels (in, out) and keeps attention heads as their own axes,
so each conversion is a rename, a transpose and a reshape. Hugging Face's GPT2LMHeadModel
uses the same names, but its Conv1D weights are already (in, out), GPT-2 always has
biases, and files saved from a bare GPT2Model lack the `transformer.` prefix.

Model configs map too: nanoGPT's `model_args` and HF's `config.json` <-> GPTConfig. Arrays
are numpy float32 here; torch is not needed to convert.
"""

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
    C, nh = config.n_embd, config.n_head
    hs = C // nh
    j, t = f"h_{i}", f"transformer.h.{i}"
    return [
        (f"{j}/attn/c_attn", f"{t}.attn.c_attn", (C, 3, nh, hs), (3, nh, hs), (C, 3 * C)),
        (f"{j}/attn/c_proj", f"{t}.attn.c_proj", (nh, hs, C), (C,), (C, C)),
        (f"{j}/mlp/c_fc", f"{t}.mlp.c_fc", (C, 4 * C), (4 * C,), (C, 4 * C)),
        (f"{j}/mlp/c_proj", f"{t}.mlp.c_proj", (4 * C, C), (C,), (4 * C, C)),
    ]


def _norm_pairs(config: GPTConfig) -> list[tuple[str, str]]:
    pairs = [("ln_f", "transformer.ln_f")]
    for i in range(config.n_layer):
        pairs += [
            (f"h_{i}/ln_1", f"transformer.h.{i}.ln_1"),
            (f"h_{i}/ln_2", f"transformer.h.{i}.ln_2"),
        ]
    return pairs


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
    sd = {
        "transformer.wte.weight": _np(params["wte"]["embedding"]),
        "transformer.wpe.weight": _np(params["wpe"]["embedding"]),
    }
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    for i in range(config.n_layer):
        for path, prefix, _, _, matrix in _linear_pairs(config, i):
            layer = _get(params, path)
            kernel = _np(layer["kernel"]).reshape(matrix)  # (in, out)
            sd[f"{prefix}.weight"] = np.ascontiguousarray(kernel.T)  # (out, in)
            if config.bias:
                sd[f"{prefix}.bias"] = _np(layer["bias"]).reshape(-1)
    for path, prefix in _norm_pairs(config):
        sd[f"{prefix}.weight"] = _np(_get(params, path)["scale"])
        if config.bias:
            sd[f"{prefix}.bias"] = _np(_get(params, path)["bias"])
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
    params: dict = {
        "wte": {"embedding": take("transformer.wte.weight", (V, C))},
        "wpe": {"embedding": take("transformer.wpe.weight", (T, C))},
    }
    for i in range(config.n_layer):
        for path, prefix, kshape, bshape, (n_in, n_out) in _linear_pairs(config, i):
            weight = take(f"{prefix}.weight", (n_out, n_in))
            layer = {"kernel": np.ascontiguousarray(weight.T).reshape(kshape)}
            if config.bias:
                layer["bias"] = take(f"{prefix}.bias", (n_out,)).reshape(bshape)
            _put(params, path, layer)
    for path, prefix in _norm_pairs(config):
        norm = {"scale": take(f"{prefix}.weight", (C,))}
        if config.bias:
            norm["bias"] = take(f"{prefix}.bias", (C,))
        _put(params, path, norm)
    if "lm_head.weight" in sd and not np.array_equal(
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
                for _, prefix in _norm_pairs(config)
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


GELUS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig from a GPT-2 `config.json`; other architectures are refused.

    GPT-2 was trained with the tanh approximation of GELU (gelu_new); jaxgpt, like
    nanoGPT, computes the exact GELU for every GELU variant.
    """
    if hf.get("model_type") != "gpt2":
        raise ConvertError(f"config.json has model_type={hf.get('model_type')!r}, not gpt2")
    checks = {
        "n_inner": hf.get("n_inner") in (None, 4 * hf.get("n_embd", 0)),
        "activation_function": hf.get("activation_function", "gelu_new") in GELUS,
        "layer_norm_epsilon": abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12,
        "scale_attn_weights": hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": not hf.get("scale_attn_by_inverse_layer_idx", False),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConvertError(f"config.json: {key}={hf.get(key)!r} is not supported by jaxgpt")
    try:
        return GPTConfig(
            block_size=hf["n_positions"],
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            bias=True,
        )
    except KeyError as e:
        raise ConvertError(f"config.json lacks {e.args[0]}") from None
    except ConfigError as e:
        raise ConvertError(f"config.json: {e}") from None


def hf_config(config: GPTConfig) -> dict:
    """A GPT-2 `config.json` for a jaxgpt model. activation "gelu" is the exact GELU, so
    transformers computes the same logits as jaxgpt."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "dtype": "float32",
    }
