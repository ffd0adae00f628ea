"""Numerical building blocks of the model: causal attention, activations, rotary embeddings.

Kept apart from model.py so that the modules read like nanoGPT's while the kernels
underneath can be swapped (XLA's fused attention, cuDNN flash attention, or plain
einsums, blocked over queries for training: the fastest choice on CPU).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x), in torch.nn.GELU()'s form (nanoGPT's): jax.nn.gelu's erfc
    form costs XLA:CPU two branches per element (3% of the CPU config's step)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's tanh approximation of GELU (HF's gelu_new, torch's approximate="tanh")."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu2(x: jax.Array) -> jax.Array:
    """ReLU squared (Primer; the modded-nanogpt MLP)."""
    return jnp.square(jax.nn.relu(x))


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu2": relu2}


def rotary(x: jax.Array, pos: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of queries or keys (B, T, nh, hs) at positions pos (T,).

    Llama's convention (transformers' rotate_half): dimension i < hs/2 pairs with i + hs/2
    and turns by pos * theta^(-2i/hs). The angles are computed in float32.
    """
    hs = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, hs, 2, dtype=jnp.float32) / hs)  # (hs/2,)
    angles = pos.astype(jnp.float32)[:, None] * inv_freq  # (T, hs/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, None, :]  # (T, 1, hs)
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, None, :]
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)


def softcap(logits: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(logits / cap): logits bounded to (-cap, cap); cap 0 leaves them as they are."""
    return cap * jnp.tanh(logits / cap) if cap > 0 else logits


def attention_impl(impl: str, dtype: str, training_dropout: bool) -> str:
    """Resolve `auto` to a concrete implementation for the current backend.

    cuDNN's flash attention runs on GPUs in half precision; it (like XLA's fused
    `jax.nn.dot_product_attention`) has no attention dropout, so the einsum path is used
    whenever dropout is active.
    """
    if training_dropout:
        return "einsum"
    if impl == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and dtype in ("bfloat16", "float16") else "einsum"
    return impl


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    impl: str = "einsum",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    q_offset: jax.Array | int | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(hs) + causal mask) v over (B, T, nh, hs) inputs.

    Queries are the last Tq positions of the Tk keys, so Tq < Tk (a prefix already in a
    cache) works too; or, given q_offset, positions q_offset..q_offset+Tq-1 (a fixed-size
    KV cache: keys past the last query are masked). Scores and softmax are in float32
    whatever the input dtype. The einsum implementation of a training step (Tq = Tk, no
    attention dropout) is `blocked_causal_attention`.

    Grouped-query attention: k and v may have fewer heads than q, nh = G * n_kv_head;
    query head h reads key/value head h // G (Llama's repeat_kv).
    """
    if impl in ("xla", "cudnn") and q_offset is None:  # both take grouped k, v as they are
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=None if impl == "xla" else "cudnn"
        )
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # (B, Tk, nh, hs)
    Tq, Tk, hs = q.shape[1], k.shape[1], q.shape[-1]
    # (B, nh, T, hs) layouts make both einsums plain batched matmuls
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    if q_offset is None and Tq == Tk and not dropout:
        return jnp.swapaxes(blocked_causal_attention(q, k, v), 1, 2)
    att = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    att = att * (1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    q_pos = jnp.arange(Tq)[:, None] + (Tk - Tq if q_offset is None else q_offset)
    att = jnp.where(jnp.arange(Tk)[None, :] <= q_pos, att, -jnp.inf)
    att = jax.nn.softmax(att, axis=-1)
    if dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, att.shape)
        att = jnp.where(keep, att / (1.0 - dropout_rate), 0.0)
    y = jnp.einsum("bhqk,bhkd->bhqd", att.astype(v.dtype), v)  # (B, nh, Tq, hs)
    return jnp.swapaxes(y, 1, 2)  # (B, Tq, nh, hs)


def query_block(T: int) -> int:
    """Query rows per block of blocked_causal_attention: 64 (32 for short sequences), or
    the whole sequence when T does not split evenly."""
    bq = 64 if T >= 128 else 32
    return bq if T > bq and T % bq == 0 else T


def _attention_block(qs, k, v, q0: int):
    """Queries q0..q0+bq-1 (pre-scaled, (B, nh, bq, hs)) against keys 0..q0+bq-1.

    Returns the output (B, nh, bq, hs), the unnormalised probabilities p = exp(s - max)
    (0 where masked) and their row sums l, both float32.
    """
    bq, Tk = qs.shape[2], k.shape[2]
    s = jnp.einsum("bhqd,bhkd->bhqk", qs, k, preferred_element_type=jnp.float32)
    s = jnp.where(jnp.arange(Tk)[None, :] <= q0 + jnp.arange(bq)[:, None], s, -jnp.inf)
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))  # (B, nh, bq, Tk)
    l = jnp.sum(p, axis=-1, keepdims=True)  # (B, nh, bq, 1)
    pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (pv / l).astype(v.dtype), p, l


@jax.custom_vjp
def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention over (B, nh, T, hs) inputs, the same function as the
    einsum path, computed in query blocks that skip the key blocks above the diagonal.

    Blocks of 64 queries see only keys up to their last position: at block 256, 10 of the
    16 (64 x 64) score tiles, 62.5% of the attention matmuls and softmax. The softmax
    normalisation divides the (bq, hs) output instead of the (bq, T) probabilities, and the
    backward pass (`_blocked_bwd`) is written out: one elementwise pass over the scores
    (dS = p * (dP - D)) where autodiff makes three, and D comes from the (bq, hs) output.
    6/6/384 block 256 batch 16: 0.94x the step with plain einsum attention.
    """
    return _blocked_fwd(q, k, v)[0]


def _blocked_fwd(q, k, v):
    T, hs = q.shape[2], q.shape[3]
    qs = q * jnp.asarray(1.0 / math.sqrt(hs), q.dtype)
    bq = query_block(T)
    blocks = [
        _attention_block(qs[:, :, i : i + bq], k[:, :, : i + bq], v[:, :, : i + bq], i)
        for i in range(0, T, bq)
    ]
    y = jnp.concatenate([b[0] for b in blocks], axis=2)  # (B, nh, T, hs)
    return y, (qs, k, v, y, [b[1] for b in blocks], [b[2] for b in blocks])


def _blocked_bwd(res, dy):
    """With P = p / l: dV = P^T dy, dP = dy V^T, dS = P * (dP - D), D = rowsum(dy * y),
    dq = dS K / sqrt(hs), dK = dS^T q / sqrt(hs); 1/l is applied to the (bq, hs) dy."""
    qs, k, v, y, ps, ls = res
    T, hs = qs.shape[2], qs.shape[3]
    bq = query_block(T)
    f32 = jnp.float32
    dqs, dk, dv = [], jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
    for n, i in enumerate(range(0, T, bq)):
        p, e = ps[n], i + bq  # this block's keys are 0..e-1
        dyl = dy[:, :, i:e].astype(f32) / ls[n]  # (B, nh, bq, hs)
        d = jnp.sum(dyl * y[:, :, i:e].astype(f32), axis=-1, keepdims=True)  # D / l
        dyl_c = dyl.astype(v.dtype)
        dv = dv.at[:, :, :e].add(
            jnp.einsum("bhqk,bhqd->bhkd", p.astype(v.dtype), dyl_c, preferred_element_type=f32)
        )
        dp = jnp.einsum("bhqd,bhkd->bhqk", dyl_c, v[:, :, :e], preferred_element_type=f32)
        ds = (p * (dp - d)).astype(qs.dtype)  # (B, nh, bq, e), 0 where masked
        dqs.append(jnp.einsum("bhqk,bhkd->bhqd", ds, k[:, :, :e], preferred_element_type=f32))
        dk = dk.at[:, :, :e].add(
            jnp.einsum("bhqk,bhqd->bhkd", ds, qs[:, :, i:e], preferred_element_type=f32)
        )
    dq = jnp.concatenate(dqs, axis=2) * (1.0 / math.sqrt(hs))
    return dq.astype(qs.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


blocked_causal_attention.defvjp(_blocked_fwd, _blocked_bwd)


def dense(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, n_in: int, dtype: jnp.dtype
) -> jax.Array:
    """x @ kernel (+ bias), contracting the last n_in axes of x, computed in `dtype`."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if bias is None:
        return _dense(x, kernel, n_in)
    return _dense_bias(x, kernel, bias.astype(dtype))


def _dense_grads(x: jax.Array, kernel: jax.Array, g: jax.Array, n_in: int):
    """dx = g kernel^T and dkernel = x^T g, as 2-D matmuls over the flattened rows.

    Written out rather than left to autodiff, whose weight gradient contracts the (B, T,
    ...) arrays over their two leading axes: XLA:CPU then copies the activation into a
    transposed layout first (6/6/384 block 256: twelve (16384, 384) copies, ~0.5 s a
    step), while a 2-D matmul reads its transposed operand in place.
    """
    rows = math.prod(x.shape[: x.ndim - n_in])  # B * T
    x2, g2 = x.reshape(rows, -1), g.reshape(rows, -1)  # (B*T, in), (B*T, out)
    k2 = kernel.reshape(x2.shape[1], g2.shape[1])  # (in, out)
    dx = (g2 @ k2.T).reshape(x.shape)
    dkernel = (x2.T @ g2).reshape(kernel.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, kernel, n_in):
    return jnp.tensordot(x, kernel, axes=n_in)


def _dense_fwd(x, kernel, n_in):
    return _dense(x, kernel, n_in), (x, kernel)


def _dense_bwd(n_in, res, g):
    return _dense_grads(*res, g, n_in)


_dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def _dense_bias(x, kernel, bias):
    return jnp.tensordot(x, kernel, axes=kernel.ndim - bias.ndim) + bias


def _dense_bias_fwd(x, kernel, bias):
    return _dense_bias(x, kernel, bias), (x, kernel, bias)


def _dense_bias_bwd(res, g):
    """The bias gradient as a matmul with a ones vector: XLA:CPU lowers the plain sum
    over (B, T) to slow split reductions."""
    x, kernel, bias = res
    dx, dkernel = _dense_grads(x, kernel, g, kernel.ndim - bias.ndim)
    g2 = g.reshape(-1, bias.size)  # (B*T, out)
    dbias = (jnp.ones(g2.shape[0], g.dtype) @ g2).reshape(bias.shape)
    return dx, dkernel, dbias.astype(bias.dtype)


_dense_bias.defvjp(_dense_bias_fwd, _dense_bias_bwd)


@jax.custom_vjp
def logits_matmul(x: jax.Array, wte: jax.Array) -> jax.Array:
    """x @ wte.T with float32 output: (..., C), (V, C) -> (..., V) float32.

    The backward pass casts the float32 cotangent to the compute dtype first, so in
    bfloat16 the two large vocabulary matmuls of the backward run on the bf16 units (as
    under PyTorch autocast) instead of being promoted to float32. In float32 it is exactly
    the plain gradient.
    """
    return jnp.einsum("...c,vc->...v", x, wte, preferred_element_type=jnp.float32)


def _logits_fwd(x, wte):
    return logits_matmul(x, wte), (x, wte)


def _logits_bwd(res, g):
    x, wte = res
    g = g.astype(x.dtype)  # (..., V)
    dx = jnp.einsum("...v,vc->...c", g, wte, preferred_element_type=jnp.float32)
    dwte = jnp.einsum("...v,...c->vc", g, x, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dwte.astype(wte.dtype)


logits_matmul.defvjp(_logits_fwd, _logits_bwd)
