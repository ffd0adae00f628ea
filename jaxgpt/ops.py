"""Numerical building blocks of the model: causal attention and GELU.

Kept apart from model.py so that the modules read like nanoGPT's while the kernels
underneath can be swapped (XLA's fused attention, cuDNN flash attention, or plain
einsums, which are the fastest choice on CPU).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x), in torch.nn.GELU()'s form (nanoGPT's): jax.nn.gelu's erfc
    form costs XLA:CPU two branches per element (3% of the CPU config's step)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


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
    whatever the input dtype.
    """
    if impl in ("xla", "cudnn") and q_offset is None:
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=None if impl == "xla" else "cudnn"
        )
    Tq, Tk, hs = q.shape[1], k.shape[1], q.shape[-1]
    # (B, nh, T, hs) layouts make both einsums plain batched matmuls
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    att = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    att = att * (1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    q_pos = jnp.arange(Tq)[:, None] + (Tk - Tq if q_offset is None else q_offset)
    att = jnp.where(jnp.arange(Tk)[None, :] <= q_pos, att, -jnp.inf)
    att = jax.nn.softmax(att, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, att.shape)
        att = jnp.where(keep, att / (1.0 - dropout_rate), 0.0)
    y = jnp.einsum("bhqk,bhkd->bhqd", att.astype(v.dtype), v)  # (B, nh, Tq, hs)
    return jnp.swapaxes(y, 1, 2)  # (B, Tq, nh, hs)


def dense(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, n_in: int, dtype: jnp.dtype
) -> jax.Array:
    """x @ kernel (+ bias), contracting the last n_in axes of x, computed in `dtype`."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if bias is None:
        return _dense(x, kernel, n_in)
    return _dense_bias(x, kernel, bias.astype(dtype))


def _dense_grads(x: jax.Array, kernel: jax.Array, g: jax.Array, n_in: int):
    """dx = g kernel^T and dkernel = x^T g, written out rather than left to autodiff.

    XLA:CPU's matmuls want the contracted (B, T) axes minor in the left operand, so one
    (B*T, features) activation gets a transposed copy, and its strided write is slow.
    Autodiff's order copies the output gradient g, 4x wider than x in mlp.c_fc; here the
    narrower of x and g is the left operand and the (small) kernel-shaped product is
    transposed instead. Measured in one process, alternating (this 2-core CPU): the CPU
    config's step 134 -> 110 ms, 6/6/384 block 256 batch 64 35.2 -> 24.6 s.
    """
    batch = tuple(range(x.ndim - n_in))  # leading axes of x and g, e.g. (B, T)
    out = tuple(range(len(batch), g.ndim))  # trailing axes of g: the features
    dx = jnp.tensordot(g, kernel, axes=(out, tuple(range(n_in, kernel.ndim))))
    if math.prod(x.shape[len(batch) :]) <= math.prod(g.shape[len(batch) :]):
        dkernel = jnp.tensordot(x, g, axes=(batch, batch))
    else:  # (out..., in...) -> (in..., out...)
        dkernel = jnp.tensordot(g, x, axes=(batch, batch))
        n_out = len(out)
        dkernel = dkernel.transpose(tuple(range(n_out, dkernel.ndim)) + tuple(range(n_out)))
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
    n_in = kernel.ndim - bias.ndim
    batch = tuple(range(x.ndim - n_in))
    dx, dkernel = _dense_grads(x, kernel, g, n_in)
    ones = jnp.ones(x.shape[: len(batch)], g.dtype)
    dbias = jnp.tensordot(ones, g, axes=(batch, batch))
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
