"""The GPT language model, as nanoGPT's model.py defines it, in Flax linen.

Token + learned position embeddings, n_layer pre-LayerNorm blocks (causal self-attention
with a fused qkv projection, then a 4x MLP with exact GELU), a final LayerNorm, and an
lm head tied to the token embedding. Parameter names are nanoGPT's/HF's (wte, wpe, h_0..,
ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj, ln_f), so converting weights
is a rename plus reshapes (see interop/statedict.py).

The attention projections keep heads as their own axis, c_attn: (C, 3, nh, hs) and
c_proj: (nh, hs, C), so tensor parallelism splits whole heads. Every parameter carries
logical axis names (embed, heads, kv, mlp, vocab) that sharding.py maps to the mesh.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import GPTConfig
from jaxgpt.ops import attention_impl, causal_attention, dense, gelu, logits_matmul


def _normal(std: float, axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _dtypes(config: GPTConfig) -> dict:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def _layer_norm(config: GPTConfig, name: str) -> nn.LayerNorm:
    # flax computes LayerNorm statistics in float32 even for bfloat16 inputs
    return nn.LayerNorm(
        epsilon=1e-5,
        use_bias=config.bias,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
        **_dtypes(config),
    )


def _residual_std(config: GPTConfig) -> float:
    # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * n_layer)
    return 0.02 / math.sqrt(2 * config.n_layer)


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
        kernel = self.param("kernel", _normal(self.std, self.axes), shape, param_dtype)
        bias = None
        if cfg.bias:
            bias_axes = self.axes[self.n_in :]
            bias = self.param("bias", _zeros(bias_axes), tuple(self.features), param_dtype)
        return dense(x, kernel, bias, self.n_in, jnp.dtype(cfg.dtype))


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, decode_pos=None) -> jax.Array:
        cfg = self.config
        B, T, C = x.shape
        nh, hs = cfg.n_head, C // cfg.n_head
        # query, key, value for all heads in one matmul
        qkv = Linear((3, nh, hs), ("embed", None, "heads", "kv"), cfg, name="c_attn")(x)
        # qkv: (B, T, 3, nh, hs)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, nh, hs)
        dropout = cfg.dropout if not deterministic else 0.0
        impl = attention_impl(cfg.attention, cfg.dtype, dropout > 0)
        if decode_pos is not None:
            # KV cache (kv_cache.py): x holds positions decode_pos..decode_pos+T-1; their
            # keys/values go into fixed (B, block_size, nh, hs) buffers, queries attend to
            # every cached position up to their own
            shape = (B, cfg.block_size, nh, hs)
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
        h = Linear((4 * cfg.n_embd,), ("embed", "mlp"), cfg, name="c_fc")(x)  # (B, T, 4C)
        h = gelu(h)
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
            _layer_norm(self.config, "ln_1")(x), deterministic, decode_pos
        )
        x = x + MLP(self.config, name="mlp")(_layer_norm(self.config, "ln_2")(x), deterministic)
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
        self.wpe = nn.Embed(
            cfg.block_size,
            cfg.n_embd,
            embedding_init=_normal(0.02, (None, "embed")),
            **_dtypes(cfg),
        )
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
        self.ln_f = _layer_norm(cfg, "ln_f")

    def features(self, idx: jax.Array, deterministic: bool = True, decode_pos=None) -> jax.Array:
        """Final hidden states (after ln_f) for token ids idx: (B, T) -> (B, T, C).

        decode_pos: idx holds positions decode_pos.. and attention reads and writes the
        `cache` collection (KV-cache generation, see kv_cache.py).
        """
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} > block_size {self.config.block_size}")
        pos = jnp.arange(T) if decode_pos is None else decode_pos + jnp.arange(T)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        x = self.drop(x, deterministic=deterministic)
        if self.config.scan_layers:
            x, _ = self.h(x, deterministic, decode_pos)
        else:
            for block in self.h:
                x = block(x, deterministic, decode_pos)
        return self.ln_f(x)

    def lm_head(self, x: jax.Array) -> jax.Array:
        """Logits from hidden states, tied to wte, always float32: (..., C) -> (..., V)."""
        dtype = self.config.dtype
        return logits_matmul(x.astype(dtype), self.wte.embedding.astype(dtype))

    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        """Logits for every position: (B, T) int -> (B, T, vocab_size) float32."""
        return self.lm_head(self.features(idx, deterministic))


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

    The lm head shares wte, so it is counted once.
    """
    n = sum(p.size for p in jax.tree.leaves(params))
    if non_embedding:
        n -= config.block_size * config.n_embd
    return n
