"""What Muon costs per step: the train step and the optimizer update alone, AdamW vs Muon.

    python scripts/muon_cost.py CONFIG [--key=value ...] [--rounds=N]

In one process, alternating blocks of 10 calls round by round (A B C ... A B C ...): the
compiled train step with optimizer=adamw and optimizer=muon, and the optimizer update
alone (tx.update + apply_updates on fixed gradients) for AdamW, for Muon, and for Muon
with one Newton-Schulz loop per layer (muon.over_stacked_layers left out). Prints each
variant's median and min ms, the paired step ratio, and the FLOPs XLA counts in the
update and in forward + backward. Synthetic tokens; vocab_size from the command line;
tcmalloc preloaded as the jaxgpt command does.
"""

import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt import muon, sharding, train
from jaxgpt.config import load_train_config
from jaxgpt.model import GPT, cross_entropy, init_params
from jaxgpt.perf import cpu


def step_fn(cfg, vocab: int):
    """(a call running one compiled train step on synthetic tokens, the GFLOP and the MB
    of memory traffic XLA counts in that step)."""
    tx = train.make_optimizer(cfg)
    mesh = sharding.make_mesh(cfg)
    model_cfg = cfg.model_config(vocab)
    step = train.make_train_step(model_cfg, cfg, tx, mesh, ahead=True)
    state = [train.create_state(model_cfg, tx, mesh, jax.random.key(cfg.seed))]
    shape = (cfg.gradient_accumulation_steps, cfg.batch_size, cfg.block_size + 1)
    batch = np.random.default_rng(0).integers(0, vocab, shape, dtype=np.int32)

    def run():
        state[0], metrics = step(state[0], batch)
        return metrics["loss"]

    cost = step.cost_analysis()
    return run, cost["flops"] / 1e9, cost["bytes accessed"] / 1e6


def update_fn(cfg, vocab: int, tx):
    """The update alone, and the GFLOP XLA counts in it."""
    params = init_params(cfg.model_config(vocab), jax.random.key(cfg.seed))
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-2, p.shape), p.dtype), params)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    box = [params, tx.init(params)]
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(*box).compile()

    def run():
        box[:] = compiled(*box)
        return box[0]["ln_f"]["scale"]

    return run, compiled.cost_analysis()["flops"] / 1e9


def main(argv: list[str]) -> None:
    cpu.use_tcmalloc()  # the allocator `jaxgpt bench` runs with (re-executes this script)
    rounds = int(next((a.split("=")[1] for a in argv if a.startswith("--rounds=")), 10))
    argv = [a for a in argv if not a.startswith("--rounds=")]
    config_file = argv[0] if argv and not argv[0].startswith("--") else None
    cfg = load_train_config(config_file, argv[1:] if config_file else argv)
    vocab = cfg.vocab_size or 50304
    adamw, muon_cfg = (
        dataclasses.replace(cfg, optimizer="adamw"),
        dataclasses.replace(cfg, optimizer="muon"),
    )
    # the same Muon without stacking the layers for Newton-Schulz
    stacked, muon.over_stacked_layers = muon.over_stacked_layers, lambda inner: inner
    per_layer = train.make_optimizer(muon_cfg)
    muon.over_stacked_layers = stacked
    updates = {
        "update adamw": update_fn(adamw, vocab, train.make_optimizer(adamw)),
        "update muon": update_fn(muon_cfg, vocab, train.make_optimizer(muon_cfg)),
        "update muon, NS per layer": update_fn(muon_cfg, vocab, per_layer),
    }
    variants = {"step adamw": step_fn(adamw, vocab)[0], "step muon": step_fn(muon_cfg, vocab)[0]}
    variants.update({name: run for name, (run, _) in updates.items()})
    for run in variants.values():
        for _ in range(3):
            jax.block_until_ready(run())
    ms = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            for _ in range(10):
                out = run()
            jax.block_until_ready(out)
            ms[name].append((time.perf_counter() - t0) / 10 * 1000)
    for name, times in ms.items():
        print(f"{name:28s} median {statistics.median(times):7.2f} ms   min {min(times):7.2f} ms")
    ratios = [m / a for m, a in zip(ms["step muon"], ms["step adamw"])]
    print(f"step muon / adamw: {statistics.median(ratios):.3f} (median of {rounds} paired)")
    x = jnp.zeros((cfg.batch_size, cfg.block_size), jnp.int32)
    model = GPT(cfg.model_config(vocab))
    params = init_params(cfg.model_config(vocab), jax.random.key(0))
    loss = lambda p: cross_entropy(model.apply({"params": p}, x), x)  # noqa: E731
    grad = jax.jit(jax.grad(loss)).lower(params).compile()
    fwd_bwd = grad.cost_analysis()["flops"] / 1e9 * cfg.gradient_accumulation_steps
    flops = ", ".join(f"{name} {gflop:.2f}" for name, (_, gflop) in updates.items())
    print(f"GFLOP (XLA's count): forward + backward {fwd_bwd:.2f}, {flops}")


if __name__ == "__main__":
    main(sys.argv[1:])
