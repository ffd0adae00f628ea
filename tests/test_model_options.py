"""The model options after nanoGPT (rope, rmsnorm, MLP variants, qk_norm, grouped-query
attention, untied head, soft-capping, zero-init): their parameters, their math, causality,
scan/remat/bfloat16, and the KV-cache sampler's exactness with them. Parity with the
PyTorch reference is in test_parity.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import COMBOS, OPTIONS, tiny_run

from jaxgpt import cli, kv_cache, loop, ops, sample
from jaxgpt.config import ConfigError, GPTConfig, to_dict
from jaxgpt.generation import compile_timer
from jaxgpt.interop import convert
from jaxgpt.interop.bundle import ConvertError
from jaxgpt.model import GPT, abstract_params, init_params, stack_layers, unbox
from jaxgpt.sample import SamplingParams

# 4 heads so that grouped-query attention has 2 (or 1) key/value heads
BASE = GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=4, n_embd=32, bias=True)


def with_options(**kw) -> GPTConfig:
    return dataclasses.replace(BASE, **kw)


def live(combo: str) -> dict:
    """A combination's options with random output projections: zero-initialised ones make
    every logit 0 at init, which would make these checks trivial."""
    return {**COMBOS[combo], "zero_init_proj": False}


def shapes(config: GPTConfig) -> dict:
    return jax.tree.map(lambda a: a.shape, unbox(abstract_params(config)))


def test_default_options_are_nanogpts_model():
    assert shapes(BASE) == shapes(GPTConfig(**{**BASE.__dict__}))
    tree = shapes(BASE)
    assert set(tree) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    assert tree["h_0"]["attn"]["c_attn"]["kernel"] == (32, 3, 4, 8)
    assert tree["h_0"]["mlp"]["c_fc"]["kernel"] == (32, 128)


def test_option_parameters():
    C, V, H, hs = 32, 32, 48, 8
    rope = shapes(with_options(**OPTIONS["rope"]))
    assert "wpe" not in rope and rope["h_0"] == shapes(BASE)["h_0"]
    rms = shapes(with_options(**OPTIONS["rmsnorm"]))["h_0"]["ln_1"]
    assert rms == {"scale": (C,)}  # RMSNorm has no bias
    assert "ln_1" not in shapes(with_options(**OPTIONS["rmsnorm_no_scale"]))["h_0"]
    assert shapes(with_options(**OPTIONS["layernorm_no_scale"]))["ln_f"] == {"bias": (C,)}
    mlp = shapes(with_options(**OPTIONS["swiglu"]))["h_0"]["mlp"]
    assert mlp["c_fc"] == {"kernel": (C, 2, H), "bias": (2, H)} and mlp["c_proj"]["kernel"] == (
        H,
        C,
    )
    attn = shapes(with_options(**OPTIONS["qk_norm"]))["h_0"]["attn"]
    assert attn["q_norm"] == attn["k_norm"] == {"scale": (hs,)}
    assert "q_norm" not in shapes(with_options(**OPTIONS["qk_norm_no_scale"]))["h_0"]["attn"]
    gqa = shapes(with_options(**OPTIONS["gqa"]))["h_0"]["attn"]
    assert gqa["c_attn"]["kernel"] == (C, 2 + 2, 2, hs)  # G = 2 query heads per kv head
    assert gqa["c_proj"]["kernel"] == (4, hs, C)
    assert shapes(with_options(**OPTIONS["mqa"]))["h_0"]["attn"]["c_attn"]["kernel"] == (
        C, 4 + 2, 1, hs,
    )  # fmt: skip
    assert shapes(with_options(**OPTIONS["untied"]))["lm_head"] == {"kernel": (C, V)}


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(pos_encoding="alibi"), "pos_encoding='alibi': choose one of learned, rope"),
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(mlp="gelu2"), "mlp='gelu2'"),
        (dict(n_kv_head=3), "n_kv_head=3 must divide n_head=4"),
        (dict(pos_encoding="rope", n_embd=36, n_head=4), "even head size"),
        (dict(rope_theta=0.0), "rope_theta=0.0 must be > 0"),
        (dict(logit_softcap=-1.0), "logit_softcap=-1.0 must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(kw, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        with_options(**kw)


def test_rotary_turns_each_pair_by_its_angle():
    """x (1, T, 1, hs) at position t: pair (i, i + hs/2) is the complex number x_i + j x_i+hs/2
    multiplied by exp(j t theta^(-2i/hs))."""
    hs, theta = 8, 100.0
    x = jax.random.normal(jax.random.key(0), (1, 5, 1, hs))
    pos = jnp.array([0, 1, 2, 7, 30])
    got = ops.rotary(x, pos, theta)
    z = np.asarray(x[..., : hs // 2]) + 1j * np.asarray(x[..., hs // 2 :])
    freq = theta ** (-np.arange(0, hs, 2) / hs)
    want = z * np.exp(1j * np.asarray(pos)[None, :, None, None] * freq)
    np.testing.assert_allclose(got, np.concatenate([want.real, want.imag], -1), atol=1e-5)


def test_rotary_scores_depend_only_on_distance():
    q, k = jax.random.normal(jax.random.key(1), (2, 1, 1, 1, 16))
    score = lambda i, j: float(  # noqa: E731
        jnp.sum(ops.rotary(q, jnp.array([i]), 1e4) * ops.rotary(k, jnp.array([j]), 1e4))
    )
    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_grouped_query_attention_equals_repeated_key_value_heads():
    """A GQA model computes the multi-head model whose key/value heads are repeated: query
    head j * G + i reads key/value head j (Llama's repeat_kv)."""
    gqa = with_options(n_kv_head=2)
    params = init_params(gqa, jax.random.key(0))
    mha_params = jax.tree.map(lambda x: x, params)
    for layer in ("h_0", "h_1"):
        attn = params[layer]["attn"]["c_attn"]
        q = attn["kernel"][:, :2]  # (C, G, nkv, hs)
        q = jnp.swapaxes(q, 1, 2).reshape(32, 1, 4, 8)  # head j * G + i
        kv = jnp.repeat(attn["kernel"][:, 2:], 2, axis=2)  # (C, 2, nh, hs)
        qb = jnp.swapaxes(attn["bias"][:2], 0, 1).reshape(1, 4, 8)
        kvb = jnp.repeat(attn["bias"][2:], 2, axis=1)
        mha_params[layer]["attn"]["c_attn"] = {
            "kernel": jnp.concatenate([q, kv], axis=1),
            "bias": jnp.concatenate([qb, kvb], axis=0),
        }
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
    got = GPT(gqa).apply({"params": params}, idx)
    want = GPT(BASE).apply({"params": mha_params}, idx)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_causality_with_options(combo):
    cfg = with_options(**live(combo))
    params = init_params(cfg, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
    changed = idx.at[:, 9:].set((idx[:, 9:] + 7) % 32)
    apply = jax.jit(lambda x: GPT(cfg).apply({"params": params}, x))
    a, b = apply(idx), apply(changed)
    np.testing.assert_array_equal(a[:, :9], b[:, :9])
    assert not np.allclose(a[:, 9:], b[:, 9:])


def test_zero_init_and_softcap():
    cfg = with_options(**OPTIONS["zero_init"])
    params = init_params(cfg, jax.random.key(0))
    for leaf in ("attn", "mlp"):
        assert not np.any(params["h_0"][leaf]["c_proj"]["kernel"])
    assert not np.any(params["lm_head"]["kernel"])
    idx = jnp.zeros((1, 16), jnp.int32)
    assert not np.any(GPT(cfg).apply({"params": params}, idx))  # the head starts at 0
    capped = with_options(logit_softcap=0.5)
    params = init_params(capped, jax.random.key(0))
    raw = GPT(BASE).apply({"params": params}, idx)
    np.testing.assert_allclose(
        GPT(capped).apply({"params": params}, idx), 0.5 * jnp.tanh(raw / 0.5), atol=1e-6
    )


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_scan_remat_and_attention_kernels_compute_the_same_function(combo):
    cfg = with_options(**live(combo))
    params = init_params(cfg, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
    ref = GPT(cfg).apply({"params": params}, idx)
    scan = dataclasses.replace(cfg, scan_layers=True, remat=True)
    np.testing.assert_allclose(
        GPT(scan).apply({"params": stack_layers(params)}, idx), ref, atol=1e-5
    )
    xla = dataclasses.replace(cfg, attention="xla")  # jax.nn.dot_product_attention, GQA native
    np.testing.assert_allclose(GPT(xla).apply({"params": params}, idx), ref, atol=1e-5)


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_bfloat16_with_options_tracks_float32(combo):
    cfg = with_options(**live(combo))
    params = init_params(cfg, jax.random.key(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
    ref = GPT(cfg).apply({"params": params}, idx)
    half = GPT(dataclasses.replace(cfg, dtype="bfloat16")).apply({"params": params}, idx)
    assert half.dtype == jnp.float32  # logits stay float32
    assert float(jnp.max(jnp.abs(half - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))


# KV cache: the tests of test_kv_cache.py with rope, grouped-query attention and qk_norm
KV = {name: dataclasses.replace(BASE, block_size=40, **live(name)) for name in COMBOS}


@pytest.fixture(scope="module", params=sorted(KV))
def kv_model(request):
    cfg = KV[request.param]
    return cfg, jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(3))


def test_kv_cache_holds_only_the_key_value_heads(kv_model):
    cfg, _ = kv_model
    cache = kv_cache.init_cache(cfg, 3)
    assert cache["h_0"]["attn"]["key"].shape == (3, 40, cfg.kv_heads, 8)


@pytest.mark.parametrize("prompt_len", [1, 45])
def test_kv_cache_greedy_and_sampled_tokens_equal_fixed_buffer(kv_model, prompt_len):
    cfg, params = kv_model
    prompt = np.random.default_rng(prompt_len).integers(0, 32, (3, prompt_len))
    for sp, seed in ((SamplingParams(temperature=0.0), 1337), (SamplingParams(1.0, 10, 0.9), 7)):
        fixed = sample.generate(params, cfg, prompt, 90, sp, seed)
        cached = np.concatenate(
            [prompt, *kv_cache.stream_tokens(params, cfg, prompt, 90, sp, seed)], 1
        )
        np.testing.assert_array_equal(cached, fixed)


def test_kv_cache_prefill_then_decode_equals_full_forward(kv_model):
    cfg, params = kv_model
    model = GPT(cfg)
    idx = jax.random.randint(jax.random.key(6), (2, cfg.block_size), 0, cfg.vocab_size)
    full = jax.jit(model.apply)({"params": params}, idx)

    @jax.jit
    def run(cache, tokens, pos):
        x, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            decode_pos=pos,
            method=GPT.features,
            mutable=["cache"],
        )
        return model.apply({"params": params}, x, method=GPT.logits), mutated["cache"]

    logits, cache = run(kv_cache.init_cache(cfg, 2), idx[:, :5], 0)
    steps = [logits]
    for t in range(5, cfg.block_size):
        logits, cache = run(cache, idx[:, t : t + 1], t)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_kv_cache_compiles_once_per_batch_size(kv_model):
    cfg, params = kv_model
    sp = SamplingParams(1.0, 10, 0.9)

    def run(prompt_len, n):
        prompt = np.ones((2, prompt_len), np.int32)
        return list(kv_cache.stream_tokens(params, cfg, prompt, n, sp))

    run(1, 10)
    with compile_timer() as seconds:
        for prompt_len, n in [(7, 70), (50, 3), (39, 40)]:
            run(prompt_len, n)
    assert seconds[0] == 0.0


# training runs with the options: checkpoints, exact resume, conversion
RUN_OPTIONS = {**COMBOS["speedrun"], "n_kv_head": 1, "zero_init_proj": False}


@pytest.fixture(scope="module")
def option_runs(data_dir, tmp_path_factory):
    """A 20-step run with the speedrun options and grouped-query attention, and the same
    run stopped at its step-10 checkpoint and resumed to 20."""
    root = tmp_path_factory.mktemp("options")
    full = loop.setup(tiny_run(data_dir, str(root / "full"), **RUN_OPTIONS))
    full_losses = loop.train_loop(full)
    loop.run_training(tiny_run(data_dir, str(root / "split"), max_iters=10, **RUN_OPTIONS))
    resumed = loop.setup(tiny_run(data_dir, str(root / "split"), init_from="resume", **RUN_OPTIONS))
    return root, full, full_losses, resumed, loop.train_loop(resumed)


def test_runs_with_options_resume_bit_identical(option_runs):
    _, full, full_losses, resumed, resumed_losses = option_runs
    assert resumed_losses == full_losses
    assert full.model_cfg.pos_encoding == "rope" and full.model_cfg.kv_heads == 1
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
        np.testing.assert_array_equal(a, b)


def test_resume_with_other_options_is_refused(option_runs, data_dir, capsys):
    root = option_runs[0]
    plain = tiny_run(data_dir, str(root / "full"), bias=False)  # without the options
    args = [f"--{k}={v}" for k, v in to_dict(plain).items()]
    assert cli.main(["train", *args, "--init_from=resume", "--max_iters=30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        "checkpoint was trained with pos_encoding=rope but this run asks for pos_encoding=learned"
        in err
    )


def test_converting_a_run_with_options(option_runs, tmp_path):
    root, full = option_runs[0], option_runs[1]
    bundle, _ = convert.convert("jaxgpt", str(root / "full"), "jaxgpt", str(tmp_path / "copy"))
    assert bundle.config == full.model_cfg
    back = convert.load_checkpoint(str(tmp_path / "copy"))
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(bundle.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConvertError, match="nanoGPT's model has no pos_encoding=rope"):
        convert.convert("jaxgpt", str(root / "full"), "nanogpt", str(tmp_path / "nano"))
    assert not (tmp_path / "nano").exists()
