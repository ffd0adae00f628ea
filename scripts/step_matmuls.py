"""The matmuls of one train step, alone: XLA (as jaxgpt configures it) against PyTorch.

    python scripts/step_matmuls.py experiments/shakespeare_char_cpu.py [--key=value ...]
        [--rounds 3] [--reps 30]

Every matmul of a GPT training step of the config's shape (per layer: the four projections
forward, their input and weight gradients, attention's two batched matmuls forward and four
backward), on random operands, with nothing else around them: once as one jitted XLA
program, once as PyTorch calls (torch 2 threads), each in its own process, alternated
`rounds` times. Prints the medians: how fast the step could be if all that is not a matmul
were free. The lm head is left out (65 characters: negligible).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def operands(B: int, T: int, C: int, nh: int) -> dict:
    rng = np.random.default_rng(0)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    hs = C // nh
    return {
        "x": r(B * T, C),  # a (B*T, C) activation
        "h": r(B * T, 4 * C),  # the MLP's hidden activation
        "g": r(B * T, 3 * C),  # the qkv gradient
        "w_attn": r(C, 3 * C),
        "w_proj": r(C, C),
        "w_fc": r(C, 4 * C),
        "w_mproj": r(4 * C, C),
        "q": r(B, nh, T, hs),  # queries / keys / values / their gradients
        "p": r(B, nh, T, T),  # attention probabilities / score gradients
    }


def layer(o: dict, mm, bmm, bmm_nt, bmm_tn, t) -> list:
    """One layer's matmuls: forward, then backward (input and weight gradients)."""
    x, h, g, q, p = o["x"], o["h"], o["g"], o["q"], o["p"]
    w = {k: o[k] for k in ("w_attn", "w_proj", "w_fc", "w_mproj")}
    return [
        mm(x, w["w_attn"]), mm(x, w["w_proj"]), mm(x, w["w_fc"]), mm(h, w["w_mproj"]),
        bmm_nt(q, q), bmm(p, q),  # q k^T, p v
        mm(g, t(w["w_attn"])), mm(t(x), g), mm(x, t(w["w_proj"])), mm(t(x), x),
        mm(h, t(w["w_fc"])), mm(t(x), h), mm(x, t(w["w_mproj"])), mm(t(h), x),
        bmm(p, q), bmm_tn(p, q), bmm(p, q), bmm_tn(p, q),  # dq, dk, dp (as p v), dv
    ]  # fmt: skip


def median_seconds(run, reps: int) -> float:
    """Median wall seconds of run() over reps calls, after one untimed call."""
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_jax(o: dict, L: int, reps: int) -> float:
    import jax
    import jax.numpy as jnp

    import jaxgpt  # noqa: F401  (jaxgpt's XLA flags)

    def step(o):
        out = []
        for i in range(L):  # a different operand per layer, as in a real step
            oi = {k: v + i for k, v in o.items()}
            out += layer(
                oi,
                jnp.matmul,
                lambda a, b: jnp.einsum("bhqk,bhkd->bhqd", a, b),
                lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b),
                lambda a, b: jnp.einsum("bhqk,bhqd->bhkd", a, b),
                jnp.transpose,
            )
        return out

    f = jax.jit(step)
    args = {k: jnp.asarray(v) for k, v in o.items()}
    return median_seconds(lambda: jax.block_until_ready(f(args)), reps)


def time_torch(o: dict, L: int, reps: int) -> float:
    import torch

    args = {k: torch.from_numpy(v) for k, v in o.items()}

    def step():
        out = []
        for i in range(L):
            oi = {k: v + i for k, v in args.items()}
            out += layer(
                oi,
                torch.matmul,
                torch.matmul,
                lambda a, b: a @ b.transpose(-1, -2),
                lambda a, b: a.transpose(-1, -2) @ b,
                torch.t,
            )
        return out

    return median_seconds(step, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--impl", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    from jaxgpt.config import load_train_config

    cfg = load_train_config(args.config, overrides)
    dims = (cfg.batch_size, cfg.block_size, cfg.n_embd, cfg.n_head)
    if args.impl:  # one measurement, in this process
        o = operands(*dims)
        fn = time_jax if args.impl == "jax" else time_torch
        print(json.dumps({"ms": fn(o, cfg.n_layer, args.reps) * 1000}))
        return
    from jaxgpt.perf import cpu

    library = cpu.allocator_library()  # both with jaxgpt's allocator
    env = cpu.tcmalloc_env(library) if library else None
    results = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for impl in results:
            cmd = [sys.executable, __file__, *sys.argv[1:], f"--impl={impl}"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            results[impl].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
    B, T, C = cfg.batch_size, cfg.block_size, cfg.n_embd
    # per layer: 12 C^2 projection weights x 2 FLOPs x 3 (forward, two gradients), and six
    # attention matmuls of 2 B T^2 C FLOPs each
    flops = cfg.n_layer * (72 * B * T * C**2 + 12 * B * T**2 * C)
    for impl, ms in results.items():
        med = statistics.median(ms)
        runs = ", ".join(f"{m:.1f}" for m in ms)
        print(f"{impl:6s} {med:8.2f} ms ({runs}), {flops / med / 1e6:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
