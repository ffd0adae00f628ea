"""Weight conversion between jaxgpt parameters and nanoGPT's PyTorch state_dict.

nanoGPT's names are `transformer.{wte,wpe,h.<i>.{ln_1,attn.c_attn,attn.c_proj,ln_2,
mlp.c_fc,mlp.c_proj},ln_f}` and `lm_head` (tied to wte), with nn.Linear weights stored
(out, in). jaxgpt stores kernels (in, out) and keeps attention heads as their own axes,
so each conversion is a rename, a transpose and a reshape. Arrays are numpy float32 here;
torch is not needed to convert.
"""

import numpy as np

from jaxgpt.config import GPTConfig
from jaxgpt.model import stack_layers, unstack_layers


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
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

    Raises KeyError naming the first missing key and ValueError on a shape mismatch.
    """
    sd = strip_prefix(state_dict)

    def take(key: str, shape: tuple) -> np.ndarray:
        if key not in sd:
            raise KeyError(key)
        value = _np(sd[key])
        if value.shape != tuple(shape):
            raise ValueError(f"{key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
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
    return stack_layers(params) if config.scan_layers else params
