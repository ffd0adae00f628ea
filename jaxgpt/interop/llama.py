"""Llama-family weights: transformers' LlamaForCausalLM state_dict and config.json <-> jaxgpt.

A Llama is jaxgpt's GPT with the options pos_encoding=rope, norm=rmsnorm (with a scale),
mlp=swiglu, n_kv_head and tie_embeddings (model.py), and bias=False; bias=True, which
puts biases on every Linear and none on an RMSNorm, is Llama's attention_bias=mlp_bias=True.
The names:

    model.embed_tokens.weight (V, C)                      wte/embedding
    model.layers.i.input_layernorm.weight (C,)            h_i/ln_1/scale
    model.layers.i.self_attn.{q,k,v}_proj.weight          h_i/attn/c_attn/kernel (C, G+2, nkv, hs)
    model.layers.i.self_attn.o_proj.weight (C, nh * hs)   h_i/attn/c_proj/kernel (nh, hs, C)
    model.layers.i.post_attention_layernorm.weight (C,)   h_i/ln_2/scale
    model.layers.i.mlp.{gate,up}_proj.weight (H, C)       h_i/mlp/c_fc/kernel (C, 2, H)
    model.layers.i.mlp.down_proj.weight (C, H)            h_i/mlp/c_proj/kernel (H, C)
    model.norm.weight (C,)                                ln_f/scale
    lm_head.weight (V, C)                                 lm_head/kernel (C, V); tied: absent

q_proj, k_proj, v_proj stacked row-wise are torch_ref's c_attn (query head h reads key/value
head h // G in both: Llama's repeat_kv order), gate_proj, up_proj its SwiGLU c_fc, so the
conversion is a rename into nanoGPT's layout and statedict.py's functions from there. RoPE
is transformers' rotate_half convention in ops.rotary too: q_proj and k_proj map with no
permutation. What jaxgpt cannot compute exactly (scaled RoPE, another activation or head
size, biases on only some Linears) is refused in one line.
"""

import numpy as np

from jaxgpt.config import ConfigError, GPTConfig
from jaxgpt.interop.bundle import ConvertError
from jaxgpt.interop.statedict import _np, from_nanogpt, to_nanogpt

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # carried in the tokenizer meta


def _linears(config: GPTConfig, i: int) -> list[tuple[str, list[tuple[str, int]], int]]:
    """Block i's linears: (nanoGPT prefix, its Llama parts as (prefix, rows), columns)."""
    C, H, hs = config.n_embd, config.hidden_size, config.head_size
    q, kv = config.n_head * hs, config.kv_heads * hs
    t, m = f"transformer.h.{i}", f"model.layers.{i}"
    a, f = f"{m}.self_attn", f"{m}.mlp"
    return [
        (f"{t}.attn.c_attn", [(f"{a}.q_proj", q), (f"{a}.k_proj", kv), (f"{a}.v_proj", kv)], C),
        (f"{t}.attn.c_proj", [(f"{a}.o_proj", C)], q),
        (f"{t}.mlp.c_fc", [(f"{f}.gate_proj", H), (f"{f}.up_proj", H)], C),
        (f"{t}.mlp.c_proj", [(f"{f}.down_proj", C)], H),
    ]  # fmt: skip


def _renamed(config: GPTConfig) -> list[tuple[str, str]]:
    """(nanoGPT name, Llama name) of the tensors that only change their name."""
    names = [("transformer.wte.weight", "model.embed_tokens.weight")]
    for i in range(config.n_layer):
        t, m = f"transformer.h.{i}", f"model.layers.{i}"
        names += [(f"{t}.ln_1.weight", f"{m}.input_layernorm.weight")]
        names += [(f"{t}.ln_2.weight", f"{m}.post_attention_layernorm.weight")]
    names += [("transformer.ln_f.weight", "model.norm.weight")]
    if not config.tie_embeddings:
        names += [("lm_head.weight", "lm_head.weight")]
    return names


def from_llama(state_dict: dict, config: GPTConfig) -> dict:
    """LlamaForCausalLM state_dict (torch tensors or arrays) -> jaxgpt parameters (numpy
    float32). A tied model's lm_head.weight, if saved, is ignored, as transformers does.

    Raises ConvertError naming the first missing key or mismatched shape.
    """

    def take(key: str, shape: tuple) -> np.ndarray:
        if key not in state_dict:
            raise ConvertError(f"missing key {key}")
        value = _np(state_dict[key])
        if value.shape != shape:
            raise ConvertError(f"{key} has shape {value.shape}, expected {shape} by config.json")
        return value

    C, V = config.n_embd, config.vocab_size
    sd = {
        ours: take(theirs, (C,) if ".ln_" in ours else (V, C)) for ours, theirs in _renamed(config)
    }
    for i in range(config.n_layer):
        for prefix, parts, n_in in _linears(config, i):
            sd[f"{prefix}.weight"] = np.concatenate(
                [take(f"{p}.weight", (n, n_in)) for p, n in parts]
            )
            if config.bias:
                sd[f"{prefix}.bias"] = np.concatenate([take(f"{p}.bias", (n,)) for p, n in parts])
    return from_nanogpt(sd, config)


def to_llama(params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """jaxgpt parameters (a model without llama_options) -> LlamaForCausalLM's state_dict,
    without lm_head.weight when tied (transformers ties it to embed_tokens on load)."""
    sd = to_nanogpt(params, config)
    out = {theirs: sd[ours] for ours, theirs in _renamed(config)}
    for i in range(config.n_layer):
        for prefix, parts, _ in _linears(config, i):
            ends = np.cumsum([n for _, n in parts])[:-1]
            suffixes = (".weight", ".bias") if config.bias else (".weight",)
            for suffix in suffixes:
                pieces = np.split(sd[prefix + suffix], ends)  # along the output rows
                out |= {p + suffix: np.ascontiguousarray(x) for (p, _), x in zip(parts, pieces)}
    return out


# the options a LlamaForCausalLM computes with, and their values there
LLAMA_MODEL = {
    "pos_encoding": "rope",
    "norm": "rmsnorm",
    "norm_scale": True,
    "mlp": "swiglu",
    "qk_norm": False,
    "logit_softcap": 0.0,
}


def llama_options(config: GPTConfig) -> list[str]:
    """The settings of `config` (`key=value`) that a LlamaForCausalLM cannot hold."""
    return [f"{k}={getattr(config, k)}" for k, v in LLAMA_MODEL.items() if getattr(config, k) != v]


def _rope(hf: dict) -> dict:
    """RoPE's settings: transformers 5's rope_parameters, else the older top-level
    rope_theta and rope_scaling (None: unscaled)."""
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    rope.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    return rope


def config_from_llama(hf: dict) -> GPTConfig:
    """GPTConfig from a Llama `config.json`; what jaxgpt cannot compute exactly is refused."""
    rope = _rope(hf)
    try:
        C, nh = hf["hidden_size"], hf["num_attention_heads"]
        head_size = C // nh
        checks = [  # (key, value, the value jaxgpt computes, why another is refused)
            ("hidden_act", hf.get("hidden_act", "silu"), "silu", "jaxgpt's SwiGLU gates with silu"),
            ("rope_type", rope["rope_type"], "default", "jaxgpt computes RoPE unscaled"),
            ("partial_rotary_factor", rope["partial_rotary_factor"], 1.0,
             "jaxgpt rotates whole heads"),
            ("head_dim", hf.get("head_dim") or head_size, head_size,
             f"jaxgpt's head size is hidden_size / num_attention_heads = {head_size}"),
            ("attention_bias", bool(hf.get("attention_bias")), bool(hf.get("mlp_bias")),
             f"with mlp_bias={hf.get('mlp_bias')}: jaxgpt's bias is on every Linear or none"),
        ]  # fmt: skip
        for key, value, supported, why in checks:
            if value != supported:
                raise ConvertError(f"config.json: {key}={value!r} is not supported ({why})")
        return GPTConfig(
            block_size=hf["max_position_embeddings"],
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=nh,
            n_embd=C,
            bias=bool(hf.get("attention_bias", False)),
            pos_encoding="rope",
            rope_theta=float(rope["rope_theta"]),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            mlp="swiglu",
            mlp_hidden=hf["intermediate_size"],
            n_kv_head=hf.get("num_key_value_heads") or nh,
            tie_embeddings=hf.get("tie_word_embeddings", False),
        )
    except KeyError as e:
        raise ConvertError(f"config.json lacks {e.args[0]}") from None
    except (ConfigError, TypeError, ZeroDivisionError) as e:
        raise ConvertError(f"config.json: {e}") from None


def llama_config(config: GPTConfig, tokenizer: dict) -> dict:
    """A Llama `config.json` for a jaxgpt model without llama_options; the special token
    ids come from the tokenizer meta (carried from the source's config.json)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers < 5 reads these two
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": "float32",
    } | {k: tokenizer.get(k) for k in SPECIAL_IDS}


def special_ids(hf: dict) -> dict:
    """The special token ids of a Llama config.json, for the tokenizer meta."""
    return {k: hf[k] for k in SPECIAL_IDS if hf.get(k) is not None}
