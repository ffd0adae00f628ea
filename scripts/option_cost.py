"""What each model option costs per step, against the nanoGPT model of the same shape.

    python scripts/option_cost.py [CONFIG] [--key=value ...] [--rounds=N]

CONFIG defaults to experiments/speedrun_char_cpu.py. The base is that shape with nanoGPT's
blocks and optimizer (learned positions, LayerNorm, GELU, no QK-norm, AdamW); each row adds
one of the recipe's techniques to the base (and QK-norm with the gains the recipe leaves
out), and the last row is the recipe itself. In one process, alternating blocks of 10
compiled train steps round by round (base, +rope, ..., recipe, base, ...), synthetic
tokens. Prints a markdown table: median ms per step, the median and quartiles of the
paired ratios to the base, and what XLA's cost analysis counts in the compiled step
(forward, backward and update), each with its ratio to the base: the FLOPs, and the bytes
its kernels read and write. A technique should not cost more time per step than its
arithmetic adds: FLOPs for matmul-bound work, memory traffic for a norm. tcmalloc is
preloaded as the jaxgpt command does.
"""

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import jax
from muon_cost import step_fn  # scripts/ is on sys.path when run as a script

from jaxgpt.config import load_train_config
from jaxgpt.perf import cpu

RECIPE = str(Path(__file__).resolve().parents[1] / "experiments" / "speedrun_char_cpu.py")
NANOGPT = dict(pos_encoding="learned", norm="layernorm", mlp="gelu", qk_norm=False)
NANOGPT |= dict(optimizer="adamw")
TECHNIQUES = {  # the recipe's value of the keys the base sets
    "+ rope": ("pos_encoding",),
    "+ rmsnorm": ("norm",),
    "+ relu2": ("mlp",),
    "+ qk_norm": ("qk_norm", "qk_norm_scale"),
    "+ muon": ("optimizer",),
}


def variants(recipe) -> dict:
    base = dataclasses.replace(recipe, **NANOGPT)
    rows = {"nanoGPT blocks, AdamW (base)": base}
    for name, keys in TECHNIQUES.items():
        rows[name] = dataclasses.replace(base, **{key: getattr(recipe, key) for key in keys})
    gains = dict(qk_norm=True, qk_norm_scale=True)  # Qwen3's, not the recipe's
    rows["+ qk_norm with its gains"] = dataclasses.replace(base, **gains)
    rows["recipe (all of them)"] = recipe
    return rows


def main(argv: list[str]) -> None:
    cpu.use_tcmalloc()  # the allocator `jaxgpt bench` runs with (re-executes this script)
    rounds = int(next((a.split("=")[1] for a in argv if a.startswith("--rounds=")), 10))
    if rounds < 2:
        sys.exit("option_cost.py: --rounds must be at least 2 (the ratios' quartiles need two)")
    argv = [a for a in argv if not a.startswith("--rounds=")]
    config_file = argv[0] if argv and not argv[0].startswith("--") else RECIPE
    overrides = argv[1:] if argv and not argv[0].startswith("--") else argv
    recipe = load_train_config(config_file, overrides)
    vocab = recipe.vocab_size or 65  # shakespeare_char's characters
    steps = {name: step_fn(cfg, vocab) for name, cfg in variants(recipe).items()}
    for run, *_ in steps.values():
        for _ in range(3):
            jax.block_until_ready(run())
    ms = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (run, *_) in steps.items():
            t0 = time.perf_counter()
            for _ in range(10):
                out = run()
            jax.block_until_ready(out)
            ms[name].append((time.perf_counter() - t0) / 10 * 1000)
    base = next(iter(steps))
    print(f"{rounds} rounds of 10 steps each; {config_file}, vocab {vocab}")
    print("| model | ms/step (median) | time / base [quartiles] | GFLOP/step | GFLOP / base |"
          " MB/step | MB / base |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    _, base_gflop, base_mb = steps[base]
    for name, (_, gflop, mb) in steps.items():
        q1, ratio, q3 = statistics.quantiles([a / b for a, b in zip(ms[name], ms[base])], n=4)
        cells = [name, f"{statistics.median(ms[name]):.2f}", f"{ratio:.3f} [{q1:.3f}-{q3:.3f}]"]
        cells += [f"{gflop:.3f}", f"{gflop / base_gflop:.3f}", f"{mb:.0f}", f"{mb / base_mb:.3f}"]
        print(f"| {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
