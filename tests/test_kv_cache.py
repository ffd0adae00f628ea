"""KV-cache generation: the same tokens as the fixed-buffer sampler (itself checked against
nanoGPT's growing loop in test_sample.py), the same logits as a full forward pass, one
compilation per batch size, and the generate() API around it."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL

import jaxgpt
from jaxgpt import kv_cache, sample
from jaxgpt.generation import compile_timer
from jaxgpt.model import GPT, init_params
from jaxgpt.prep.tokenizer import CharTokenizer
from jaxgpt.sample import SamplingParams

# block_size 40: prompts are prefilled in pieces of 32 positions (0..31, then 8..39)
CONFIG = dataclasses.replace(TINY_MODEL, block_size=40)


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CONFIG, jax.random.key(3))


def both_samplers(params, prompt, n, sp, seed=1337):
    fixed = sample.generate(params, CONFIG, prompt, n, sp, seed)
    stream = kv_cache.stream_tokens(params, CONFIG, prompt, n, sp, seed)
    cached = np.concatenate([prompt] + list(stream), axis=1)
    return fixed, cached


@pytest.mark.parametrize("prompt_len", [1, 20, 37, 40, 45])
def test_greedy_tokens_equal_fixed_buffer_sampler(params, prompt_len):
    prompt = np.random.default_rng(prompt_len).integers(0, 32, (2, prompt_len))
    # 130 new tokens: the context passes block_size, then slides on for 2+ more windows
    fixed, cached = both_samplers(params, prompt, 130, SamplingParams(temperature=0.0))
    np.testing.assert_array_equal(cached, fixed)


SAMPLED = SamplingParams(temperature=1.0, top_k=10, top_p=0.9)  # shared: fewer compiles


def test_sampled_tokens_equal_with_same_seed(params):
    prompt = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    sp = SAMPLED
    fixed, cached = both_samplers(params, prompt, 60, sp, seed=7)
    np.testing.assert_array_equal(cached, fixed)
    _, other = both_samplers(params, prompt, 60, sp, seed=8)
    assert not np.array_equal(cached, other)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefill_then_decode_equals_full_forward(scan_layers):
    """maxtext's check: prefill + one-token decode steps give the full pass's logits."""
    config = dataclasses.replace(CONFIG, scan_layers=scan_layers)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(5))
    model = GPT(config)
    idx = jax.random.randint(jax.random.key(6), (2, config.block_size), 0, config.vocab_size)
    full = jax.jit(model.apply)({"params": params}, idx)  # (B, T, V)

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

    P = 5
    logits, cache = run(kv_cache.init_cache(config, 2), idx[:, :P], 0)  # prefill
    steps = [logits]
    for t in range(P, config.block_size):
        logits, cache = run(cache, idx[:, t : t + 1], t)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_one_compilation_per_batch_size(params):
    """After the first call, no prompt length and no max_new_tokens compiles anything."""

    def run(batch, prompt_len, n):
        prompt = np.ones((batch, prompt_len), np.int32)
        return list(kv_cache.stream_tokens(params, CONFIG, prompt, n, SAMPLED))

    run(3, 1, 10)
    with compile_timer() as seconds:
        for prompt_len, n in [(7, 70), (50, 3), (40, 33), (2, 1), (39, 200)]:
            run(3, prompt_len, n)
    assert seconds[0] == 0.0
    with compile_timer() as seconds:  # the instrument sees a compilation
        jax.jit(lambda x: x + 1)(1)
    assert seconds[0] > 0.0


def test_generate_api_text_stops_and_streaming(params):
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,;!?"))  # 32 symbols
    assert tok.vocab_size == CONFIG.vocab_size
    common = dict(tokenizer=tok, max_new_tokens=60, temperature=1.0, top_k=10, top_p=0.9, seed=3)
    plain = jaxgpt.generate(params, CONFIG, "the king", num_samples=3, **common)
    assert plain.new_tokens == 3 * 60 and plain.seconds > 0
    assert plain.summary().startswith(f"generated {3 * 60} tokens in ")
    first = plain.texts[0][len("the king") :]
    stop = first[20:22]  # a string the first sample certainly generates
    pieces = []
    out = jaxgpt.generate(
        params, CONFIG, "the king", num_samples=3, stop=stop, on_text=pieces.append, **common
    )
    cut = first[: first.index(stop)]
    assert out.texts[0] == "the king" + cut and "".join(pieces) == cut
    assert len(out.tokens[0]) >= len("the king") + len(cut) + 1  # keeps the stop's token
    np.testing.assert_array_equal(out.tokens[0], plain.tokens[0][: len(out.tokens[0])])
    # a stop token ends the sample there; the fixed-buffer sampler agrees
    ids = plain.tokens[1][len("the king") :]
    by_token = jaxgpt.generate(
        params, CONFIG, "the king", num_samples=3, stop=int(ids[5]), kv_cache=False, **common
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


SHARDED = """
import sys, jax, numpy as np
from jaxgpt import kv_cache, sharding
from jaxgpt.config import TrainConfig
from jaxgpt.model import abstract_params, init_params
from test_kv_cache import CONFIG, SAMPLED

params = jax.jit(init_params, static_argnums=0)(CONFIG, jax.random.key(3))
mesh = sharding.make_mesh(TrainConfig(mesh_data=1, mesh_fsdp=1, mesh_tensor=2))
sharded = jax.device_put(params, sharding.logical_sharding(abstract_params(CONFIG), mesh))
assert len(sharded["h_0"]["attn"]["c_attn"]["kernel"].sharding.device_set) == 2
prompt = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
got = np.concatenate(list(kv_cache.stream_tokens(sharded, CONFIG, prompt, 60, SAMPLED, 7)), 1)
print(" ".join(map(str, got.ravel())))
"""


def test_sharded_params_give_the_same_tokens(params):
    """Tensor-parallel parameters (heads split) on 2 simulated devices, in a process of its own."""
    prompt = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    want = np.concatenate(list(kv_cache.stream_tokens(params, CONFIG, prompt, 60, SAMPLED, 7)), 1)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    run = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_array_equal(np.array(run.stdout.split(), int).reshape(want.shape), want)
