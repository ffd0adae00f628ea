"""Text generation with nanoGPT's sampling semantics, compiled once.

nanoGPT crops the running context to its last block_size tokens, takes the logits of the
last position, divides by the temperature, keeps the top_k, and draws from the softmax.
Here the context lives in a fixed (num_samples, block_size) buffer: while the context is
shorter than block_size the tokens fill it from the left (causal attention makes the
unused tail irrelevant) and the logits are read at the last filled position; once it is
full the buffer shifts left by one per token, which is exactly the cropped window at
positions 0..block_size-1. Tokens are generated in fixed-size chunks inside lax.scan, so
one compilation serves every prompt length and every max_new_tokens.

The key of the i-th generated token is fold_in(key(seed), i), the same in every sampler,
so samplers that compute the same logits draw the same tokens.
"""

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import GPTConfig
from jaxgpt.model import GPT

CHUNK = 32  # tokens generated per compiled call


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0: greedy (argmax)
    top_k: int | None = 200
    top_p: float | None = None  # nucleus sampling: smallest set with probability >= top_p

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def sample_logits(logits: jax.Array, key: jax.Array, sp: SamplingParams) -> jax.Array:
    """Next tokens from last-position logits: (B, V) float32 -> (B,) int32."""
    if sp.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sp.temperature
    if sp.top_k is not None and sp.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sp.top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sp.top_p is not None and sp.top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token while the probability mass before it is < top_p (the first always)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < sp.top_p, sorted_logits, jnp.inf), axis=-1)
        logits = jnp.where(logits < cutoff[:, None], -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def token_key(key: jax.Array, i) -> jax.Array:
    """The sampling key of the i-th generated token."""
    return jax.random.fold_in(key, i)


def initial_buffer(prompts: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """The (B, block_size) context buffer and its fill level for prompts (B, P)."""
    B, P = prompts.shape
    if P == 0:
        raise ValueError("the prompt must hold at least one token")
    window = prompts[:, -block_size:]
    buf = np.zeros((B, block_size), np.int32)
    buf[:, : window.shape[1]] = window
    return buf, window.shape[1]


@functools.partial(jax.jit, static_argnames=("config", "sp", "chunk"))
def _generate_chunk(params, buf, n, key, start, *, config: GPTConfig, sp: SamplingParams, chunk):
    """`chunk` tokens from the buffer state (buf (B, T), fill level n)."""
    model = GPT(config)
    T = config.block_size

    def body(carry, i):
        buf, n = carry
        x = model.apply({"params": params}, buf, method=GPT.features)  # (B, T, C)
        last = jax.lax.dynamic_index_in_dim(x, n - 1, axis=1, keepdims=False)  # (B, C)
        logits = model.apply({"params": params}, last, method=GPT.logits)  # (B, V)
        tok = sample_logits(logits, token_key(key, start + i), sp)  # (B,)
        full = n == T
        buf = jnp.where(full, jnp.roll(buf, -1, axis=1), buf)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok[:, None], jnp.where(full, T - 1, n), 1)
        return (buf, jnp.minimum(n + 1, T)), tok

    (buf, n), toks = jax.lax.scan(body, (buf, n), jnp.arange(chunk))
    return buf, n, toks.T  # toks: (B, chunk)


def stream_tokens(
    params: dict,
    config: GPTConfig,
    prompts: np.ndarray,
    max_new_tokens: int,
    sp: SamplingParams = SamplingParams(),
    seed: int = 1337,
) -> Iterator[np.ndarray]:
    """Yield the new tokens chunk by chunk, (B, <= CHUNK) each, max_new_tokens in all."""
    buf, n = initial_buffer(np.asarray(prompts, np.int32), config.block_size)
    buf, n, key = jnp.asarray(buf), jnp.int32(n), jax.random.key(seed)
    done = 0
    while done < max_new_tokens:
        buf, n, toks = _generate_chunk(params, buf, n, key, done, config=config, sp=sp, chunk=CHUNK)
        take = min(CHUNK, max_new_tokens - done)
        yield np.asarray(toks[:, :take])
        done += take


def generate(
    params: dict,
    config: GPTConfig,
    prompts: np.ndarray,
    max_new_tokens: int,
    sp: SamplingParams = SamplingParams(),
    seed: int = 1337,
) -> np.ndarray:
    """Prompts (B, P) followed by max_new_tokens sampled tokens: (B, P + max_new_tokens)."""
    new = list(stream_tokens(params, config, prompts, max_new_tokens, sp, seed))
    return np.concatenate([np.asarray(prompts, np.int32)] + new, axis=1)
