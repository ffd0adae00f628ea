"""The GPT language model, as nanoGPT's model.py defines it, in Flax linen.

Token + learned position embeddings, n_layer pre-LayerNorm blocks (causal self-attention
with a fused qkv projection, then a 4x MLP with exact GELU), a final LayerNorm, and an
lm head tied to the token embedding. Parameter names are nanoGPT's/HF's (wte, wpe, h_0..,
ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj, ln_f), so converting weights
is a rename plus reshapes (see interop/statedict.py).

The attention projections keep heads as their own axis, c_attn: (C, 3, nh, hs) and
c_proj: (nh, hs, C), so tensor parallelism splits whole heads. Every parameter carries
logical axis names (embed, heads, kv, mlp, vocab) that sharding.py maps to the mesh.

What the field learned after nanoGPT comes as GPTConfig options, each off by default
(the defaults are nanoGPT's model, bit for bit): rotary position embeddings instead of
wpe (pos_encoding=rope, RoFormer/Llama), RMSNorm (norm=rmsnorm, optionally without a
scale), the tanh GELU, ReLU^2 and SwiGLU MLPs (mlp=; SwiGLU's gate and up projections are
one c_fc kernel (C, 2, H)), RMSNorm on queries and keys (qk_norm), grouped-query attention
(n_kv_head: c_attn becomes (C, G + 2, n_kv_head, hs), G query heads per key/value head),
an untied lm head (tie_embeddings=False: lm_head/kernel (C, V)), tanh soft-capping of the
logits (logit_softcap) and zero-initialised output projections (zero_init_proj), as in
modded-nanogpt's speedrun and the Llama family.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import GPTConfig
from jaxgpt.ops import (
    ACTIVATIONS,
    attention_impl,
    causal_attention,
    dense,
    logits_matmul,
    rotary,
    softcap,
)


def _normal(std: float, axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _dtypes(config: GPTConfig) -> dict:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def _norm(config: GPTConfig, name: str, axis: str = "embed", qk: bool = False):
    """The block's norm: LayerNorm (nanoGPT) or RMSNorm, over the last axis (logical name
    `axis`); qk: q_norm or k_norm, an RMSNorm with qk_norm's gain or none. flax computes
    the statistics in float32 even for bfloat16 inputs."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,))
    use_scale = config.qk_gain if qk else config.norm_scale
    common = dict(epsilon=config.norm_eps, use_scale=use_scale, scale_init=scale_init)
    if qk or config.norm == "rmsnorm":
        return nn.RMSNorm(name=name, **common, **_dtypes(config))
    return nn.LayerNorm(
        use_bias=config.bias, bias_init=_zeros((axis,)), name=name, **common, **_dtypes(config)
    )


def _residual_std(config: GPTConfig) -> float:
    # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * n_layer);
    # zero_init_proj starts them at zero (modded-nanogpt): each block starts as the identity
    return 0.0 if config.zero_init_proj else 0.02 / math.sqrt(2 * config.n_layer)


class Linear(nn.Module):
    """y = x @ kernel + bias, contracting the last n_in axes of x with the first n_in of the
    kernel (kernel shape: x.shape[-n_in:] + features). `axes` names every kernel axis."""

    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    config: GPTConfig
    std: float = 0.02
    n_in: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        param_dtype = jnp.dtype(cfg.param_dtype)
        shape = x.shape[x.ndim - self.n_in :] + tuple(self.features)
        init = _normal(self.std, self.axes) if self.std else _zeros(self.axes)
        kernel = self.param("kernel", init, shape, param_dtype)
        bias = None
        if cfg.bias:
            bias_axes = self.axes[self.n_in :]
            bias = self.param("bias", _zeros(bias_axes), tuple(self.features), param_dtype)
        return dense(x, kernel, bias, self.n_in, jnp.dtype(cfg.dtype))


class LMHead(nn.Module):
    """An lm head of its own (tie_embeddings=False): kernel (C, V), float32 logits."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = _zeros if cfg.zero_init_proj else functools.partial(_normal, 0.02)
        shape, dtype = (cfg.n_embd, cfg.vocab_size), jnp.dtype(cfg.dtype)
        kernel = self.param("kernel", init(("embed", "vocab")), shape, jnp.dtype(cfg.param_dtype))
        return logits_matmul(x.astype(dtype), kernel.T.astype(dtype))  # (..., V)


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, decode_pos=None) -> jax.Array:
        cfg = self.config
        B, T, C = x.shape
        nh, nkv, hs = cfg.n_head, cfg.kv_heads, cfg.head_size
        G = nh // nkv  # query heads per key/value head: 1 unless grouped-query
        # query, key, value for all heads in one matmul
        qkv = Linear((G + 2, nkv, hs), ("embed", None, "heads", "kv"), cfg, name="c_attn")(x)
        # qkv: (B, T, G + 2, nkv, hs); query head j * G + i is qkv[:, :, i, j]
        q = jnp.swapaxes(qkv[:, :, :G], 2, 3).reshape(B, T, nh, hs)
        k, v = qkv[:, :, G], qkv[:, :, G + 1]  # (B, T, nkv, hs)
        if cfg.qk_norm:
            q = _norm(cfg, "q_norm", "kv", qk=True)(q)
            k = _norm(cfg, "k_norm", "kv", qk=True)(k)
        if cfg.pos_encoding == "rope":
            pos = jnp.arange(T) if decode_pos is None else decode_pos + jnp.arange(T)
            q, k = rotary(q, pos, cfg.rope_theta), rotary(k, pos, cfg.rope_theta)
        dropout = cfg.dropout if not deterministic else 0.0
        impl = attention_impl(cfg.attention, cfg.dtype, dropout > 0)
        if decode_pos is not None:
            # KV cache (kv_cache.py): x holds positions decode_pos..decode_pos+T-1; their
            # keys/values go into fixed (B, block_size, nkv, hs) buffers, queries attend to
            # every cached position up to their own
            shape = (B, cfg.block_size, nkv, hs)
            ck = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
            cv = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
            ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, decode_pos, axis=1)
            cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, decode_pos, axis=1)
            k, v, impl = ck.value, cv.value, "einsum"
        y = causal_attention(
            q,
            k,
            v,
            impl=impl,
            dropout_rate=dropout,
            dropout_rng=self.make_rng("dropout") if dropout > 0 else None,
            q_offset=decode_pos,
        )  # (B, T, nh, hs)
        y = Linear(
            (C,), ("heads", "kv", "embed"), cfg, std=_residual_std(cfg), n_in=2, name="c_proj"
        )(y)  # (B, T, C)
        return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        H = cfg.hidden_size  # 4C unless mlp_hidden
        if cfg.mlp == "swiglu":  # Llama: silu(x W_gate) * (x W_up), one matmul for both
            h = Linear((2, H), ("embed", None, "mlp"), cfg, name="c_fc")(x)  # (B, T, 2, H)
            h = jax.nn.silu(h[..., 0, :]) * h[..., 1, :]  # (B, T, H)
        else:
            h = Linear((H,), ("embed", "mlp"), cfg, name="c_fc")(x)  # (B, T, H)
            h = ACTIVATIONS[cfg.mlp](h)
        h = Linear((cfg.n_embd,), ("mlp", "embed"), cfg, std=_residual_std(cfg), name="c_proj")(
            h
        )  # (B, T, C)
        return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, decode_pos=None) -> jax.Array:
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x = x + CausalSelfAttention(self.config, name="attn")(
            _norm(self.config, "ln_1")(x), deterministic, decode_pos
        )
        x = x + MLP(self.config, name="mlp")(_norm(self.config, "ln_2")(x), deterministic)
        return x


class _ScanBlock(Block):
    """Block with nn.scan's (carry, output) signature; same parameter names as Block."""

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, decode_pos=None):
        return super().__call__(x, deterministic, decode_pos), None


class GPT(nn.Module):
    config: GPTConfig

    def setup(self):
        cfg = self.config
        self.wte = nn.Embed(
            cfg.vocab_size,
            cfg.n_embd,
            embedding_init=_normal(0.02, ("vocab", "embed")),
            **_dtypes(cfg),
        )
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embed(
                cfg.block_size,
                cfg.n_embd,
                embedding_init=_normal(0.02, (None, "embed")),
                **_dtypes(cfg),
            )
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.scan_layers:
            body = nn.remat(_ScanBlock, static_argnums=(2,)) if cfg.remat else _ScanBlock
            # parameters stacked on a leading "layers" axis under the name h
            self.h = nn.scan(
                body,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.n_layer,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg)
        else:
            block = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
            self.h = [block(cfg) for _ in range(cfg.n_layer)]  # named h_0, h_1, ...
        self.ln_f = _norm(cfg, "ln_f")

    def features(self, idx: jax.Array, deterministic: bool = True, decode_pos=None) -> jax.Array:
        """Final hidden states (after ln_f) for token ids idx: (B, T) -> (B, T, C).

        decode_pos: idx holds positions decode_pos.. and attention reads and writes the
        `cache` collection (KV-cache generation, see kv_cache.py).
        """
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} > block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":  # rope rotates q and k in the attention
            pos = jnp.arange(T) if decode_pos is None else decode_pos + jnp.arange(T)
            x = x + self.wpe(pos)
        x = self.drop(x, deterministic=deterministic)
        if self.config.scan_layers:
            x, _ = self.h(x, deterministic, decode_pos)
        else:
            for block in self.h:
                x = block(x, deterministic, decode_pos)
        return self.ln_f(x)

    def logits(self, x: jax.Array) -> jax.Array:
        """Logits from hidden states, always float32: (..., C) -> (..., V). The lm head is
        wte (tied, nanoGPT) or lm_head's kernel."""
        cfg = self.config
        if cfg.tie_embeddings:
            logits = logits_matmul(x.astype(cfg.dtype), self.wte.embedding.astype(cfg.dtype))
        else:
            logits = self.lm_head(x)
        return softcap(logits, cfg.logit_softcap)

    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        """Logits for every position: (B, T) int -> (B, T, vocab_size) float32."""
        return self.logits(self.features(idx, deterministic))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross entropy in float32; targets of -1 are ignored, as in nanoGPT."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    # the target's logit by a masked sum, not a gather: it fuses into one pass over the
    # logits, and its gradient is elementwise instead of a scatter
    hit = jnp.arange(logits.shape[-1]) == targets[..., None]  # (B, T, V) bool, never stored
    picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    mask = targets >= 0
    return jnp.sum(jnp.where(mask, logz - picked, 0.0)) / jnp.maximum(mask.sum(), 1)


def stack_layers(params: dict) -> dict:
    """Per-layer parameters h_0, h_1, ... -> one tree `h` with a leading layers axis (the
    layout of scan_layers=True). Other entries are kept as they are."""
    n_layer = sum(1 for k in params if k.startswith("h_"))
    out = {k: v for k, v in params.items() if not k.startswith("h_")}
    layers = [params[f"h_{i}"] for i in range(n_layer)]

    def stack(*xs):  # numpy stays numpy (host memory), jax arrays and tracers use jnp
        return np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs)

    out["h"] = jax.tree.map(stack, *layers)
    return out


def unstack_layers(params: dict) -> dict:
    """The stacked `h` tree of scan_layers=True -> per-layer h_0, h_1, ... (the inverse);
    per-layer parameters come back unchanged."""
    if "h" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "h"}
    n_layer = jax.tree.leaves(params["h"])[0].shape[0]
    for i in range(n_layer):
        out[f"h_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["h"])
    return out


def unbox(tree):
    """Strip the logical-axis boxes off a parameter tree (no sharding constraints added)."""
    return jax.tree.map(
        lambda b: b.value if isinstance(b, nn.Partitioned) else b,
        tree,
        is_leaf=lambda b: isinstance(b, nn.Partitioned),
    )


def init_params(config: GPTConfig, key: jax.Array) -> dict:
    """Randomly initialised parameters (plain arrays)."""
    idx = jnp.zeros((1, config.block_size), jnp.int32)
    return unbox(GPT(config).init(key, idx)["params"])


def abstract_params(config: GPTConfig) -> dict:
    """Parameter shapes/dtypes with their logical axis boxes, at no cost (eval_shape)."""
    idx = jax.ShapeDtypeStruct((1, config.block_size), jnp.int32)
    return jax.eval_shape(lambda k: GPT(config).init(k, idx), jax.random.key(0))["params"]


def num_params(params: dict, config: GPTConfig, non_embedding: bool = True) -> int:
    """Parameter count as nanoGPT reports it: position embeddings excluded by default.

    A tied lm head shares wte, so it is counted once; an untied one is counted.
    """
    n = sum(p.size for p in jax.tree.leaves(params))
    if non_embedding and config.pos_encoding == "learned":
        n -= config.block_size * config.n_embd
    return n
