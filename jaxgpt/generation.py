"""`jaxgpt.generate`: text generation for notebooks and the `jaxgpt sample` command.

Wraps the two samplers, which draw the same tokens for the same seed: the KV-cache one
(kv_cache.py, the default) and the fixed-buffer one (sample.py, `kv_cache=False`). Adds
what a user needs around them: text prompts, a batch of samples, stop strings and stop
tokens, streaming the text as it is generated, and timings with compilation excluded.

    from jaxgpt import generate
    out = generate(params, config, "ROMEO:", tokenizer=tok, max_new_tokens=200,
                   temperature=0.8, top_k=200, on_text=lambda s: print(s, end=""))
    out.texts[0], out.tokens_per_second, out.compile_seconds
"""

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxgpt import kv_cache as kv
from jaxgpt import sample
from jaxgpt.config import GPTConfig
from jaxgpt.sample import SamplingParams

# jax.monitoring events that together make up a compilation (trace, lower, compile)
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@dataclasses.dataclass
class Generation:
    tokens: list[np.ndarray]  # per sample: the prompt and its new tokens, up to a stop
    texts: list[str] | None  # per sample: the decoded prompt and new text, cut at a stop
    new_tokens: int  # tokens the sampler generated, all samples together
    seconds: float  # generation wall time, compilation excluded
    compile_seconds: float
    kept_tokens: int | None = None  # new tokens kept up to the stops; None: new_tokens

    @property
    def tokens_per_second(self) -> float:
        """The sampler's speed: every token it generated, kept or cut at a stop."""
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """The `jaxgpt sample` stderr line: the tokens kept (up to the stops, each stop's
        last token included), and what was sampled past them if any."""
        kept = self.new_tokens if self.kept_tokens is None else self.kept_tokens
        cut = f"; {self.new_tokens} sampled, cut at the stops" if kept != self.new_tokens else ""
        return (
            f"generated {kept} tokens in {self.seconds:.2f} s "
            f"({self.tokens_per_second:.1f} tokens/s, compile {self.compile_seconds:.2f} s{cut})"
        )


@contextlib.contextmanager
def compile_timer():
    """Seconds spent compiling inside the block: yields a list whose [0] is the total."""
    total = [0.0]

    def listener(event: str, duration: float, **_):
        if event in _COMPILE_EVENTS:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


class Stops:
    """Stop tokens and stop strings: where each sample's generation ends."""

    def __init__(self, stop, tokenizer):
        stops = [stop] if isinstance(stop, str | int) else list(stop or [])
        self.tokens = [int(s) for s in stops if not isinstance(s, str)]
        self.strings = [s for s in stops if isinstance(s, str) and s]
        if self.strings and tokenizer is None:
            raise ValueError("stop strings need tokenizer=")
        self.tokenizer = tokenizer

    def new_text(self, prompt: np.ndarray, new: np.ndarray) -> str:
        full = self.tokenizer.decode(np.concatenate([prompt, new]))
        return full[len(self.tokenizer.decode(prompt)) :]

    def find(self, prompt: np.ndarray, new: np.ndarray, checked: int) -> int | None:
        """New tokens kept up to the first stop (which they include), or None; the first
        `checked` new tokens are known to hold none."""
        hits = [checked + i + 1 for i, t in enumerate(new[checked:]) if int(t) in self.tokens]
        end = hits[0] if hits else len(new)
        if self.strings and any(s in self.new_text(prompt, new[:end]) for s in self.strings):
            for k in range(checked + 1, end + 1):  # the token that completes a stop string
                if any(s in self.new_text(prompt, new[:k]) for s in self.strings):
                    return k
        return end if hits else None

    def cut(self, prompt: np.ndarray, kept: np.ndarray) -> str:
        """The new text of kept tokens, ending just before the stop."""
        if len(kept) and int(kept[-1]) in self.tokens:
            kept = kept[:-1]
        text = self.new_text(prompt, kept)
        ends = [text.index(s) for s in self.strings if s in text]
        return text[: min(ends)] if ends else text

    def holdback(self) -> int:
        """Characters to hold back while streaming: maybe the start of a stop string."""
        return max((len(s) - 1 for s in self.strings), default=0)


class Streamer:
    """Hands sample 0's new text to on_text piece by piece, exactly the final text."""

    def __init__(self, on_text: Callable[[str], object], stops: Stops, prompt: np.ndarray):
        self.on_text, self.stops, self.prompt, self.shown = on_text, stops, prompt, ""

    def update(self, new: np.ndarray, final: bool) -> None:
        text = self.stops.cut(self.prompt, new)
        if not final:
            text = text.rstrip("\ufffd")  # a partial UTF-8 character: wait for the rest
            text = text[: len(text) - self.stops.holdback()]  # maybe a stop string's start
        if len(text) > len(self.shown):
            self.on_text(text[len(self.shown) :])
            self.shown = text


def _as_prompts(prompt, tokenizer, num_samples: int) -> np.ndarray:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs tokenizer=")
        prompt = tokenizer.encode(prompt)
    prompts = np.asarray(prompt, np.int32)
    if prompts.ndim == 1:
        prompts = np.tile(prompts, (num_samples, 1))
    if prompts.ndim != 2 or prompts.shape[1] == 0:
        raise ValueError("the prompt must hold at least one token")
    return prompts


def generate(
    params: dict,
    config: GPTConfig,
    prompt: str | Sequence[int] | np.ndarray,
    *,
    tokenizer=None,
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    num_samples: int = 1,
    stop: str | int | Sequence[str | int] | None = None,
    kv_cache: bool = True,
    on_text: Callable[[str], object] | None = None,
) -> Generation:
    """Sample num_samples continuations of a prompt as one batch, with nanoGPT's semantics.

    Args:
      prompt: text (needs tokenizer), token ids (P,), or a batch of prompts (B, P).
      temperature: 0 is greedy; top_k / top_p: None (or top_k 0) disables them.
      stop: strings (need tokenizer) and/or token ids; a sample ends at the first one.
        Its tokens keep the stop token (or the token completing the stop string); its
        text ends just before the stop. Generation ends when every sample has stopped.
      kv_cache: False uses the plain fixed-buffer sampler (same tokens, slower).
      on_text: called with each new piece of sample 0's text as it is generated.
    Returns:
      Generation with tokens, texts (None without a tokenizer) and timings.
    """
    sp = SamplingParams(temperature, top_k or None, top_p)
    if num_samples < 1 or max_new_tokens < 0:
        raise ValueError("num_samples must be >= 1 and max_new_tokens >= 0")
    prompts = _as_prompts(prompt, tokenizer, num_samples)
    stops = Stops(stop, tokenizer)
    if on_text is not None and tokenizer is None:
        raise ValueError("on_text needs tokenizer=")
    B = prompts.shape[0]
    sampler = kv.stream_tokens if kv_cache else sample.stream_tokens
    streamer = Streamer(on_text, stops, prompts[0]) if on_text is not None else None
    chunks, kept = [], [None] * B  # kept[b]: new tokens sample b keeps (None: all so far)
    t0 = time.perf_counter()
    with compile_timer() as compile_s:
        for toks in sampler(params, config, prompts, max_new_tokens, sp, seed):
            checked = sum(c.shape[1] for c in chunks)
            chunks.append(toks)
            new = np.concatenate(chunks, axis=1)  # (B, new tokens so far)
            if stops.tokens or stops.strings:
                kept = [
                    k if k is not None else stops.find(p, n, checked)
                    for k, p, n in zip(kept, prompts, new)
                ]
            if streamer:
                streamer.update(new[0, : kept[0]], final=kept[0] is not None)
            if all(k is not None for k in kept):
                break
        seconds = time.perf_counter() - t0 - compile_s[0]
    new = np.concatenate(chunks, axis=1) if chunks else np.zeros((B, 0), np.int32)
    new = [n[:k] for n, k in zip(new, kept)]
    if streamer:
        streamer.update(new[0], final=True)
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode(p) + stops.cut(p, n) for p, n in zip(prompts, new)]
    tokens = [np.concatenate([p, n]) for p, n in zip(prompts, new)]
    sampled, kept = sum(c.size for c in chunks), sum(len(n) for n in new)
    return Generation(tokens, texts, sampled, seconds, compile_s[0], kept)
