"""Sampling: the fixed-buffer sampler equals nanoGPT's cropped growing-context loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL

from jaxgpt import sample
from jaxgpt.model import GPT, init_params
from jaxgpt.sample import SamplingParams


def naive_generate(params, config, prompt, n, sp, seed):
    """nanoGPT's generate: crop to block_size, logits of the last position, sample."""
    idx = jnp.asarray(prompt, jnp.int32)
    key = jax.random.key(seed)
    forward = jax.jit(lambda x: GPT(config).apply({"params": params}, x))  # a compile per length
    for i in range(n):
        cond = idx[:, -config.block_size :]
        logits = forward(cond)[:, -1, :]
        nxt = sample.sample_logits(logits, sample.token_key(key, i), sp)
        idx = jnp.concatenate([idx, nxt[:, None]], axis=1)
    return np.asarray(idx)


@pytest.fixture(scope="module")
def params():
    return init_params(TINY_MODEL, jax.random.key(3))


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 23])  # block_size is 16
def test_greedy_equals_naive_growing_loop(params, prompt_len):
    prompt = np.random.default_rng(prompt_len).integers(0, 32, (2, prompt_len))
    sp = SamplingParams(temperature=0.0)
    got = sample.generate(params, TINY_MODEL, prompt, 40, sp)  # crosses block_size twice
    np.testing.assert_array_equal(got, naive_generate(params, TINY_MODEL, prompt, 40, sp, 1337))


def test_sampled_tokens_equal_naive_loop_with_same_seed(params):
    prompt = np.array([[1, 2, 3]])
    sp = SamplingParams(temperature=1.0, top_k=10)
    got = sample.generate(params, TINY_MODEL, prompt, 30, sp, seed=7)
    np.testing.assert_array_equal(got, naive_generate(params, TINY_MODEL, prompt, 30, sp, 7))
    other = sample.generate(params, TINY_MODEL, prompt, 30, sp, seed=8)
    assert not np.array_equal(got, other)


def test_compiles_once_for_any_prompt_and_length(params):
    sample._generate_chunk.clear_cache()
    sp = SamplingParams(temperature=0.5, top_k=5)
    traced = chex.assert_max_traces(sample._generate_chunk.__wrapped__, n=1)
    jitted = jax.jit(traced, static_argnames=("config", "sp", "chunk"))
    original, sample._generate_chunk = sample._generate_chunk, jitted
    try:
        for prompt_len, n in [(1, 10), (7, 70), (30, 3), (16, 33)]:
            sample.generate(params, TINY_MODEL, np.ones((3, prompt_len), np.int32), n, sp)
    finally:
        sample._generate_chunk = original


def test_top_k_one_is_greedy(params):
    prompt = np.array([[4, 5]])
    greedy = sample.generate(params, TINY_MODEL, prompt, 20, SamplingParams(temperature=0.0))
    top1 = sample.generate(params, TINY_MODEL, prompt, 20, SamplingParams(1.0, top_k=1))
    np.testing.assert_array_equal(greedy, top1)


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 2000)
    sp = SamplingParams(temperature=1.0, top_k=None, top_p=0.8)
    draws = jax.vmap(lambda k: sample.sample_logits(logits, k, sp))(keys)[:, 0]
    assert set(np.unique(np.asarray(draws))) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    frac0 = float((draws == 0).mean())
    assert abs(frac0 - 0.5 / 0.8) < 0.04


def test_bad_sampling_params():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=1.5)
