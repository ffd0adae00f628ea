"""Sampling speed: jaxgpt's KV-cache and fixed-buffer samplers vs nanoGPT's `generate`.

    PYTHONPATH=. python scripts/bench_sample.py [--rounds 5] [--gpt2_tokens 100]

Same random weights in both frameworks (statedict.to_nanogpt), prompt "\\n" (one token),
nanoGPT's sampling defaults (temperature 0.8, top_k 200). Runs alternate between the
samplers round by round; the table gives medians of the warm rounds, plus the first call
of each (jaxgpt: compilation excluded, reported apart). Speed does not depend on the
weights: both samplers do the same work whatever the tokens.
"""

import argparse
import statistics
import time

import jax
import numpy as np
import torch

from jaxgpt.config import GPTConfig
from jaxgpt.generation import generate
from jaxgpt.interop import statedict, torch_ref
from jaxgpt.model import init_params

SHAKESPEARE_CPU = GPTConfig(
    block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False
)
GPT2 = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)


def torch_model(params, config: GPTConfig) -> torch_ref.GPT:
    model = torch_ref.GPT(config)
    sd = {k: torch.from_numpy(v.copy()) for k, v in statedict.to_nanogpt(params, config).items()}
    model.load_state_dict(sd, strict=False)  # torch_ref has no attn.bias buffer to load
    return model.eval()


def time_torch(model, batch: int, n: int) -> float:
    """Tokens/s of nanoGPT's generate (its own torch RNG)."""
    idx = torch.zeros((batch, 1), dtype=torch.long)
    t = time.perf_counter()
    model.generate(idx, n, temperature=0.8, top_k=200)
    return batch * n / (time.perf_counter() - t)


def time_jax(params, config, batch: int, n: int, kv: bool) -> tuple[float, float]:
    """(tokens/s with compilation excluded, compile seconds)."""
    out = generate(params, config, [0], max_new_tokens=n, num_samples=batch, kv_cache=kv)
    return out.tokens_per_second, out.compile_seconds


def bench(cases: dict, rounds: int) -> dict:
    """cases: name -> fn() returning tokens/s (or (tokens/s, compile s)); alternating rounds."""
    results = {name: [] for name in cases}
    compiles = {}
    for _ in range(rounds + 1):  # round 0 is the first call
        for name, fn in cases.items():
            r = fn()
            tps, comp = r if isinstance(r, tuple) else (r, None)
            results[name].append(tps)
            compiles.setdefault(name, comp)
    return {
        name: dict(first=v[0], warm=statistics.median(v[1:]), runs=v[1:], compile=compiles[name])
        for name, v in results.items()
    }


def report(title: str, res: dict, baseline: str) -> None:
    print(f"\n{title}")
    print(
        "| sampler | first call tokens/s | warm tokens/s (median) | vs nanoGPT warm | compile s |"
    )
    print("|---|---|---|---|---|")
    base = res[baseline]["warm"]
    for name, r in res.items():
        comp = f"{r['compile']:.2f}" if r["compile"] is not None else "-"
        print(f"| {name} | {r['first']:.0f} | {r['warm']:.0f} | {r['warm'] / base:.2f}x | {comp} |")
    for name, r in res.items():
        print(f"  {name}: warm runs {[round(x) for x in r['runs']]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--gpt2_tokens", type=int, default=100)
    parser.add_argument("--skip_gpt2", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(1337)
    n = args.new_tokens

    cfg = SHAKESPEARE_CPU
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(0)))
    model = torch_model(params, cfg)
    cases = {
        "nanoGPT generate (torch)": lambda: time_torch(model, 1, n),
        "jaxgpt KV cache": lambda: time_jax(params, cfg, 1, n, True),
        "jaxgpt fixed buffer (--kv_cache=False)": lambda: time_jax(params, cfg, 1, n, False),
    }
    report(
        f"4/4/128 block 64, 1 sample x {n} new tokens", bench(cases, args.rounds), list(cases)[0]
    )
    m = cfg.block_size - 1  # the whole generation fits in the window: the KV cache's regime
    cases = {
        f"nanoGPT generate (torch), {m} tokens": lambda: time_torch(model, 1, m),
        f"jaxgpt KV cache, {m} tokens": lambda: time_jax(params, cfg, 1, m, True),
    }
    report(
        f"4/4/128 block 64, 1 sample x {m} new tokens (context <= block_size)",
        bench(cases, args.rounds),
        list(cases)[0],
    )
    cases = {
        "nanoGPT generate (torch), batch 10": lambda: time_torch(model, 10, n),
        "jaxgpt KV cache, batch 10": lambda: time_jax(params, cfg, 10, n, True),
    }
    report(
        f"4/4/128 block 64, 10 samples x {n} new tokens", bench(cases, args.rounds), list(cases)[0]
    )

    if not args.skip_gpt2:
        cfg, m = GPT2, args.gpt2_tokens
        params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(0)))
        model = torch_model(params, cfg)
        cases = {
            "nanoGPT generate (torch), GPT-2 124M": lambda: time_torch(model, 1, m),
            "jaxgpt KV cache, GPT-2 124M": lambda: time_jax(params, cfg, 1, m, True),
        }
        report(
            f"GPT-2 124M shape (random), 1 sample x {m} new tokens", bench(cases, 2), list(cases)[0]
        )


if __name__ == "__main__":
    main()
