"""The model: shapes, parameter counts, causality, initial loss, overfitting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_MODEL

from jaxgpt.config import GPTConfig
from jaxgpt.model import (
    GPT,
    abstract_params,
    cross_entropy,
    init_params,
    num_params,
    stack_layers,
    unbox,
)

CPU_CONFIG = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False)
GPU_CONFIG = GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, bias=False)
GPT2_CONFIG = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)


def test_shapes_cost_nothing_for_gpt2():
    params = unbox(abstract_params(GPT2_CONFIG))  # eval_shape: no memory, no FLOPs
    assert params["wte"]["embedding"].shape == (50257, 768)
    assert params["wpe"]["embedding"].shape == (1024, 768)
    assert params["h_11"]["attn"]["c_attn"]["kernel"].shape == (768, 3, 12, 64)
    assert params["h_11"]["attn"]["c_proj"]["kernel"].shape == (12, 64, 768)
    assert params["h_0"]["mlp"]["c_fc"]["kernel"].shape == (768, 3072)
    assert params["h_0"]["mlp"]["c_proj"]["kernel"].shape == (3072, 768)
    assert set(params["ln_f"]) == {"scale", "bias"}
    # GPT-2 small: 124M parameters with position embeddings, as HF counts them
    assert num_params(params, GPT2_CONFIG, non_embedding=False) == 124_439_808
    logits = jax.eval_shape(
        lambda p, x: GPT(GPT2_CONFIG).apply({"params": p}, x),
        params,
        jax.ShapeDtypeStruct((2, 1024), jnp.int32),
    )
    assert logits.shape == (2, 1024, 50257) and logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "config, millions", [(CPU_CONFIG, 0.80), (GPU_CONFIG, 10.65)], ids=["cpu", "gpu"]
)
def test_parameter_count_matches_nanogpt(config, millions):
    params = unbox(abstract_params(config))
    assert round(num_params(params, config) / 1e6, 2) == millions


def test_no_bias_means_no_bias_parameters():
    params = unbox(abstract_params(CPU_CONFIG))
    names = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert names == {"embedding", "kernel", "scale"}


def test_init_scales():
    cfg = GPTConfig(block_size=64, vocab_size=65, n_layer=8, n_head=4, n_embd=256, bias=True)
    p = init_params(cfg, jax.random.key(0))
    assert abs(float(p["wte"]["embedding"].std()) - 0.02) < 1e-3
    assert abs(float(p["h_0"]["mlp"]["c_fc"]["kernel"].std()) - 0.02) < 1e-3
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(float(p["h_3"]["mlp"]["c_proj"]["kernel"].std()) - residual) < 2e-4
    assert abs(float(p["h_3"]["attn"]["c_proj"]["kernel"].std()) - residual) < 2e-4
    assert float(jnp.abs(p["h_0"]["attn"]["c_attn"]["bias"]).max()) == 0.0
    assert float(p["ln_f"]["scale"].min()) == 1.0


def test_causality():
    params = init_params(TINY_MODEL, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, TINY_MODEL.vocab_size)
    changed = idx.at[:, 9:].set((idx[:, 9:] + 7) % TINY_MODEL.vocab_size)
    apply = jax.jit(lambda x: GPT(TINY_MODEL).apply({"params": params}, x))
    a, b = apply(idx), apply(changed)
    np.testing.assert_array_equal(a[:, :9], b[:, :9])  # positions <= 8 see no change
    assert not np.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_attention_implementations_agree(attention):
    cfg = GPTConfig(**{**TINY_MODEL.__dict__, "attention": attention})
    params = init_params(cfg, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    ref = GPT(TINY_MODEL).apply({"params": params}, idx)
    np.testing.assert_allclose(GPT(cfg).apply({"params": params}, idx), ref, atol=1e-5)


def test_scan_and_remat_compute_the_same_function():
    params = init_params(TINY_MODEL, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, TINY_MODEL.vocab_size)
    ref = GPT(TINY_MODEL).apply({"params": params}, idx)
    stacked = stack_layers(params)
    for kw in (dict(scan_layers=True), dict(scan_layers=True, remat=True)):
        cfg = GPTConfig(**{**TINY_MODEL.__dict__, **kw})
        out = GPT(cfg).apply({"params": stacked}, idx)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=str(kw))
    remat = GPTConfig(**{**TINY_MODEL.__dict__, "remat": True})
    np.testing.assert_allclose(GPT(remat).apply({"params": params}, idx), ref, atol=1e-6)


def test_initial_loss_is_ln_vocab():
    params = init_params(CPU_CONFIG, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (8, 65), 0, 65)
    logits = GPT(CPU_CONFIG).apply({"params": params}, idx[:, :-1])
    loss = float(cross_entropy(logits, idx[:, 1:]))
    assert abs(loss - math.log(65)) < 0.05, loss


def test_cross_entropy_ignores_minus_one():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[1, 2, -1], [0, -1, -1]])
    full = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
    expected = (full[0, 0] + full[0, 1] + full[1, 0]) / 3
    np.testing.assert_allclose(cross_entropy(logits, targets), expected, rtol=1e-6)


def test_overfits_one_batch():
    cfg = GPTConfig(**{**TINY_MODEL.__dict__, "dropout": 0.0})
    params = init_params(cfg, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (4, 17), 0, cfg.vocab_size)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            return cross_entropy(GPT(cfg).apply({"params": p}, batch[:, :-1]), batch[:, 1:])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    first = None
    for _ in range(150):
        params, opt_state, loss = step(params, opt_state)
        first = float(loss) if first is None else first
    assert first > 3.0 and float(loss) < 0.05, (first, float(loss))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "x_shape, k_shape",
    [
        ((3, 5, 8), (8, 32)),  # x narrower than the output (c_fc): x^T g
        ((3, 5, 32), (32, 8)),  # output narrower (mlp.c_proj): (g^T x)^T
        ((3, 5, 8), (8, 3, 2, 4)),  # structured c_attn kernel (C, 3, nh, hs)
        ((3, 5, 2, 4), (2, 4, 8)),  # structured attn.c_proj kernel (nh, hs, C)
    ],
)
def test_dense_gradients_equal_autodiff(bias, x_shape, k_shape):
    from jaxgpt.ops import dense

    kx, kk, kb, kg = jax.random.split(jax.random.key(0), 4)
    n_in = len(x_shape) - 2
    x = jax.random.normal(kx, x_shape)
    kernel = jax.random.normal(kk, k_shape)
    b = jax.random.normal(kb, k_shape[n_in:]) if bias else None
    probe = jax.random.normal(kg, x_shape[:2] + k_shape[n_in:])

    def plain(x, kernel, b):
        y = jnp.tensordot(x, kernel, axes=n_in)
        return jnp.sum((y if b is None else y + b) * probe)

    def ours(x, kernel, b):
        return jnp.sum(dense(x, kernel, b, n_in, jnp.float32) * probe)

    want = jax.grad(plain, argnums=(0, 1, 2) if bias else (0, 1))(x, kernel, b)
    got = jax.grad(ours, argnums=(0, 1, 2) if bias else (0, 1))(x, kernel, b)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [16, 64, 256])  # one block, 2 blocks of 32, 4 blocks of 64
def test_blocked_attention_equals_masked_softmax(T):
    """The training attention (query blocks, hand-written backward): the values and the
    gradients of plain masked-softmax attention."""
    from jaxgpt.ops import blocked_causal_attention, query_block

    kq, kk, kv, kp = jax.random.split(jax.random.key(T), 4)
    q, k, v = (jax.random.normal(key, (2, 3, T, 8)) for key in (kq, kk, kv))
    probe = jax.random.normal(kp, (2, 3, T, 8))

    def plain(q, k, v):
        att = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8)
        att = jnp.where(jnp.tril(jnp.ones((T, T), bool)), att, -jnp.inf)
        return jax.nn.softmax(att, axis=-1) @ v

    assert query_block(T) == {16: 16, 64: 32, 256: 64}[T]
    np.testing.assert_allclose(blocked_causal_attention(q, k, v), plain(q, k, v), atol=2e-6)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * probe), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(lambda *a: jnp.sum(blocked_causal_attention(*a) * probe), argnums=(0, 1, 2))(
        q, k, v
    )
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
