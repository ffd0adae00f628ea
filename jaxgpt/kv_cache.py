"""KV-cache generation with nanoGPT's exact semantics, compiled once per batch size.

nanoGPT's `generate` runs the model on the last block_size tokens of the context for
every new token and reads the logits of the last position. This sampler draws the same
tokens (same logits up to float rounding, same key per token as sample.py) far faster
while the context fits in block_size, in two phases:

1. Context <= block_size: the prompt is prefilled once into fixed (B, block_size, nkv, hs)
   key/value buffers per layer (model.py's `cache` collection; nkv = n_kv_head, keys
   after qk_norm and rotary embedding at their positions), then each new token is
   one position of work: its keys/values are written at its position and its query
   attends to the cached ones. Exact: in nanoGPT the tokens never move while the context
   fits, so their keys and values never change.
2. Context > block_size: nanoGPT feeds the last block_size tokens at positions
   0..block_size-1, so with learned absolute position embeddings every token moves one
   position per step and every cached key/value of every layer changes (a token's hidden
   state at layer l depends on the whole window before it, at its new positions). Rotary
   embeddings do not save this: attention scores depend only on distances, but the
   window loses its first token, which every later hidden state attended to.
   Nothing cached is reusable exactly, so each step re-prefills the shifted window:
   positions 0..T-2 write the cache, then the newest token is decoded at position T-1.
   The prefill's hidden states are unused, so XLA drops the last layer's attention
   output and MLP at positions 0..T-2 (only its c_attn, for the keys/values, remains):
   about n_layer - 3/4 blocks of work per window position instead of n_layer. Short of
   tabulating layer 0's qkv per (token, position) (a few % for tiny vocabularies), that
   is the floor for exact semantics, ~2 * N * block_size FLOPs per token: past
   block_size this sampler is only as fast as the matmuls.

Tokens are generated in chunks of 4 to 32 steps per compiled call (two while loops,
one per phase, with dynamic trip counts), so one compilation serves every prompt length
and every max_new_tokens, and the host can print one chunk while the next one runs.
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import GPTConfig
from jaxgpt.model import GPT
from jaxgpt.sample import SamplingParams, initial_buffer, sample_logits, token_key

CHUNK = 32  # decode steps per compiled call, at most (see chunk_size)
PREFILL = 32  # prompt positions per prefill step


class DecodeState(NamedTuple):
    buf: jax.Array  # (B, T) the window: the last <= block_size tokens of the context
    n: jax.Array  # () int32, tokens in buf (a full window once n == block_size)
    cache: dict  # model.py's `cache` collection: keys/values (B, T, nkv, hs) per layer
    tok: jax.Array  # (B,) the newest sampled token, not yet in buf


def decode_config(config: GPTConfig) -> GPTConfig:
    """The config to generate with: no dropout, no rematerialisation (same parameters)."""
    return dataclasses.replace(config, dropout=0.0, remat=False)


def init_cache(config: GPTConfig, batch: int) -> dict:
    """Zero key/value buffers for `batch` sequences, shaped as the model declares them."""
    idx = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    shapes = jax.eval_shape(
        lambda k, i: GPT(config).init(k, i, decode_pos=0, method=GPT.features),
        jax.random.key(0),
        idx,
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _features(config: GPTConfig, params, cache, idx, pos):
    """Hidden states of idx (B, t) at positions pos.., reading and writing the cache."""
    x, mutated = GPT(config).apply(
        {"params": params, "cache": cache},
        idx,
        decode_pos=pos,
        method=GPT.features,
        mutable=["cache"],
    )
    return x, mutated["cache"]  # x: (B, t, C)


def _next_token(config: GPTConfig, params, x_last, key, i, sp: SamplingParams):
    """Sample generated token i from the last position's hidden state (B, C)."""
    logits = GPT(config).apply({"params": params}, x_last, method=GPT.logits)  # (B, V)
    return sample_logits(logits, token_key(key, i), sp)  # (B,)


@functools.partial(jax.jit, static_argnames=("config", "sp"))
def prefill(params, buf, n, key, *, config: GPTConfig, sp: SamplingParams) -> DecodeState:
    """Run the window buf (B, T) with n filled tokens once; sample generated token 0.

    The prompt goes through in PREFILL-position pieces (a while loop), so its cost grows
    with its length, not with block_size. The last piece starts at T - PREFILL at most,
    recomputing a few positions rather than writing past the cache. Positions >= n hold
    padding: their keys/values are written but never attended to (later tokens overwrite
    them before any query reaches their position).
    """
    T = config.block_size
    size = min(PREFILL, T)
    B = buf.shape[0]

    def piece(carry):
        i, cache, _ = carry
        start = jnp.minimum(i * size, T - size)
        idx = jax.lax.dynamic_slice_in_dim(buf, start, size, axis=1)  # (B, size)
        x, cache = _features(config, params, cache, idx, start)  # (B, size, C)
        return i + 1, cache, x

    pieces = (n + size - 1) // size
    x0 = jnp.zeros((B, size, config.n_embd), jnp.dtype(config.dtype))
    _, cache, x = jax.lax.while_loop(
        lambda c: c[0] < pieces, piece, (jnp.int32(0), init_cache(config, B), x0)
    )
    start = jnp.minimum((pieces - 1) * size, T - size)
    last = jax.lax.dynamic_index_in_dim(x, n - 1 - start, axis=1, keepdims=False)  # (B, C)
    return DecodeState(buf, n, cache, _next_token(config, params, last, key, 0, sp))


def _cached_step(config: GPTConfig, params, s: DecodeState):
    """Context still fits: append the newest token and run just its position."""
    buf = jax.lax.dynamic_update_index_in_dim(s.buf, s.tok[:, None], s.n, axis=1)
    x, cache = _features(config, params, s.cache, s.tok[:, None], s.n)  # (B, 1, C)
    return buf, s.n + 1, cache, x[:, 0]


def _window_step(config: GPTConfig, params, s: DecodeState):
    """Full window: shift it left by one and re-prefill (see the module docstring)."""
    T = config.block_size
    buf = jnp.concatenate([s.buf[:, 1:], s.tok[:, None]], axis=1)  # (B, T)
    # positions 0..T-2: only the keys/values are kept, the hidden states are dead code
    _, cache = _features(config, params, s.cache, buf[:, : T - 1], 0)
    x, cache = _features(config, params, cache, s.tok[:, None], T - 1)  # (B, 1, C)
    return buf, s.n, cache, x[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "sp", "chunk"), donate_argnames=("state",))
def decode_chunk(
    params, state: DecodeState, key, start, steps, *, config: GPTConfig, sp, chunk: int
) -> tuple[DecodeState, jax.Array]:
    """Generate tokens start..start+steps-1 (steps <= chunk): (state, tokens (B, chunk))."""
    T = config.block_size
    out = jnp.zeros((state.buf.shape[0], chunk), jnp.int32)

    def loop(step_fn):
        def body(carry):
            i, s, out = carry
            buf, n, cache, x = step_fn(config, params, s)
            tok = _next_token(config, params, x, key, start + i, sp)
            out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
            return i + 1, DecodeState(buf, n, cache, tok), out

        return body

    carry = (jnp.int32(0), state, out)
    # phase 1 while the context fits, then phase 2: no branch inside a step
    carry = jax.lax.while_loop(lambda c: (c[0] < steps) & (c[1].n < T), loop(_cached_step), carry)
    _, state, out = jax.lax.while_loop(lambda c: c[0] < steps, loop(_window_step), carry)
    return state, out


def chunk_size(params: dict) -> int:
    """Decode steps per call: ~1 GFLOP of work (a streamed piece of text every few tenths
    of a second on a CPU), a power of two from 4 (GPT-2 124M) to CHUNK (small models)."""
    n = sum(x.size for x in jax.tree.leaves(params))
    return int(np.clip(2 ** np.floor(np.log2(5e8 / n)), 4, CHUNK))


def stream_tokens(
    params: dict,
    config: GPTConfig,
    prompts: np.ndarray,
    max_new_tokens: int,
    sp: SamplingParams = SamplingParams(),
    seed: int = 1337,
    chunk: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield the new tokens chunk by chunk, (B, <= chunk) each, max_new_tokens in all.

    The next chunk is dispatched before the previous one is handed out, so the caller's
    printing overlaps with the computation.
    """
    if max_new_tokens <= 0:
        return
    config, chunk = decode_config(config), chunk or chunk_size(params)
    buf, n = initial_buffer(np.asarray(prompts, np.int32), config.block_size)
    key = jax.random.key(seed)
    state = prefill(params, jnp.asarray(buf), jnp.int32(n), key, config=config, sp=sp)
    pending, steps, done = np.asarray(state.tok)[:, None], 1, 1  # before state is donated
    while done < max_new_tokens:
        steps_next = min(chunk, max_new_tokens - done)
        state, toks = decode_chunk(
            params, state, key, done, steps_next, config=config, sp=sp, chunk=chunk
        )
        yield np.asarray(pending)[:, :steps]  # waits for the previous chunk only
        pending, steps, done = toks, steps_next, done + steps_next
    yield np.asarray(pending)[:, :steps]
