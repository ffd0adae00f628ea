"""KV-cache generation: the same tokens as the fixed-buffer sampler (itself checked against
nanoGPT's growing loop in test_sample.py), the same logits as a full forward pass, one
compilation per batch size, and the generate() API around it."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL

import jaxgpt
from jaxgpt import kv_cache, sample
from jaxgpt.model import GPT, init_params
from jaxgpt.sample import SamplingParams
from jaxgpt.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def params():
    return init_params(TINY_MODEL, jax.random.key(3))


def both_samplers(params, prompt, n, sp, seed=1337, config=TINY_MODEL):
    fixed = sample.generate(params, config, prompt, n, sp, seed)
    stream = kv_cache.stream_tokens(params, config, prompt, n, sp, seed)
    cached = np.concatenate([prompt] + list(stream), axis=1)
    return fixed, cached


@pytest.mark.parametrize("prompt_len", [1, 9, 16, 23])  # block_size is 16
def test_greedy_tokens_equal_fixed_buffer_sampler(params, prompt_len):
    prompt = np.random.default_rng(prompt_len).integers(0, 32, (2, prompt_len))
    # 70 new tokens: the context passes block_size and slides on for 3+ more windows
    fixed, cached = both_samplers(params, prompt, 70, SamplingParams(temperature=0.0))
    np.testing.assert_array_equal(cached, fixed)


def test_greedy_with_a_prompt_prefilled_in_pieces():
    config = dataclasses.replace(TINY_MODEL, block_size=40)  # pieces of 32: 0..31, 8..39
    params = init_params(config, jax.random.key(4))
    prompt = np.random.default_rng(0).integers(0, 32, (2, 37))
    fixed, cached = both_samplers(params, prompt, 20, SamplingParams(0.0), config=config)
    np.testing.assert_array_equal(cached, fixed)


SAMPLED = SamplingParams(temperature=1.0, top_k=10, top_p=0.9)  # shared: fewer compiles


def test_sampled_tokens_equal_with_same_seed(params):
    prompt = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    sp = SAMPLED
    fixed, cached = both_samplers(params, prompt, 50, sp, seed=7)
    np.testing.assert_array_equal(cached, fixed)
    _, other = both_samplers(params, prompt, 50, sp, seed=8)
    assert not np.array_equal(cached, other)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefill_then_decode_equals_full_forward(scan_layers):
    """maxtext's check: prefill + one-token decode steps give the full pass's logits."""
    config = dataclasses.replace(TINY_MODEL, scan_layers=scan_layers)
    params = init_params(config, jax.random.key(5))
    model = GPT(config)
    idx = jax.random.randint(jax.random.key(6), (2, config.block_size), 0, config.vocab_size)
    full = model.apply({"params": params}, idx)  # (B, T, V)

    @jax.jit
    def run(cache, tokens, pos):
        x, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            decode_pos=pos,
            method=GPT.features,
            mutable=["cache"],
        )
        return model.apply({"params": params}, x, method=GPT.lm_head), mutated["cache"]

    P = 5
    logits, cache = run(kv_cache.init_cache(config, 2), idx[:, :P], 0)  # prefill
    steps = [logits]
    for t in range(P, config.block_size):
        logits, cache = run(cache, idx[:, t : t + 1], t)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_one_compilation_per_batch_size(params):
    sp = SamplingParams(temperature=0.5, top_k=5)
    functions = ["prefill", "decode_chunk"]
    originals = {f: getattr(kv_cache, f) for f in functions}
    statics = {"prefill": ("config", "sp"), "decode_chunk": ("config", "sp", "chunk")}
    try:
        for f in functions:  # a fresh jit cache around a function that may trace once
            traced = chex.assert_max_traces(originals[f].__wrapped__, n=1)
            setattr(kv_cache, f, jax.jit(traced, static_argnames=statics[f]))
        for prompt_len, n in [(1, 10), (7, 70), (30, 3), (16, 33), (2, 1)]:
            prompt = np.ones((3, prompt_len), np.int32)
            list(kv_cache.stream_tokens(params, TINY_MODEL, prompt, n, sp))
        with pytest.raises(AssertionError):  # a new batch size is a new shape
            list(kv_cache.stream_tokens(params, TINY_MODEL, np.ones((2, 3), np.int32), 5, sp))
    finally:
        for f in functions:
            setattr(kv_cache, f, originals[f])


def test_generate_api_text_stops_and_streaming(params):
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,;!?"))  # 32 symbols
    assert tok.vocab_size == TINY_MODEL.vocab_size
    common = dict(tokenizer=tok, max_new_tokens=60, temperature=1.0, top_k=10, top_p=0.9, seed=3)
    plain = jaxgpt.generate(params, TINY_MODEL, "the king", num_samples=3, **common)
    assert plain.new_tokens == 3 * 60 and plain.seconds > 0
    assert plain.summary().startswith(f"generated {3 * 60} tokens in ")
    first = plain.texts[0][len("the king") :]
    stop = first[20:22]  # a string the first sample certainly generates
    pieces = []
    out = jaxgpt.generate(
        params, TINY_MODEL, "the king", num_samples=3, stop=stop, on_text=pieces.append, **common
    )
    cut = first[: first.index(stop)]
    assert out.texts[0] == "the king" + cut and "".join(pieces) == cut
    assert len(out.tokens[0]) >= len("the king") + len(cut) + 1  # keeps the stop's token
    np.testing.assert_array_equal(out.tokens[0], plain.tokens[0][: len(out.tokens[0])])
    # a stop token ends the sample there; the fixed-buffer sampler agrees
    ids = plain.tokens[1][len("the king") :]
    by_token = jaxgpt.generate(
        params, TINY_MODEL, "the king", num_samples=3, stop=int(ids[5]), kv_cache=False, **common
    )
    k = int(np.argmax(ids == ids[5]))
    np.testing.assert_array_equal(by_token.tokens[1], plain.tokens[1][: len("the king") + k + 1])
    assert by_token.texts[1] == plain.texts[1][: len("the king") + k]


def test_stream_releases_only_complete_characters():
    from jaxgpt.generation import Stops, Streamer

    class Bytes:  # a byte-level tokenizer, like GPT-2's BPE on a split character
        def decode(self, ids):
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    tok, pieces = Bytes(), []
    ids = np.frombuffer("a→b<end>c".encode(), np.uint8).astype(np.int32)
    streamer = Streamer(pieces.append, Stops("<end>", tok), ids[:1])
    stops = Stops("<end>", tok)
    for k in range(2, len(ids) + 1):
        kept = stops.find(ids[:1], ids[1:k], max(0, k - 2))
        streamer.update(ids[1:k][:kept], final=kept is not None)
        if kept is not None:
            break
    assert "".join(pieces) == "→b" and "\ufffd" not in "".join(pieces)
