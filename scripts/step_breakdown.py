"""Where a train step's time goes: the step against cut-down versions of itself.

    python scripts/step_breakdown.py experiments/shakespeare_char_cpu.py [--key=value ...]
        [--blocks 10] [--per 10]

Compiles, in one process, jaxgpt's train step and four variants: without the optimizer
(gradients only), the forward pass alone, and the same two with a "matmuls only" model
(the norms, the MLP's activation and the softmax/mask replaced by the identity, so what
is left is the matmuls and the data movement around them). The variants run in
alternating blocks of --per steps, so the machine's drift hits them alike; prints each
one's median ms/step and its median ratio to the full step. The differences say what the
optimizer, the backward pass and the non-matmul work cost.
"""

import argparse
import contextlib
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import model, sharding, train
from jaxgpt.config import load_train_config
from jaxgpt.perf import cpu


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def matmul_attention(q, k, v, **_):
    """(q k^T) v per head: attention's two matmuls and transposes, no mask or softmax."""
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    att = jnp.einsum("bhqd,bhkd->bhqk", q, k)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", att, v), 1, 2)


@contextlib.contextmanager
def matmuls_only(on: bool):
    """Patch model.py's norms, MLP activation and attention while a step is traced."""
    saved = model._norm, dict(model.ACTIVATIONS), model.causal_attention
    if on:
        model._norm = lambda config, name, *args, **kw: Identity(name=name)
        model.ACTIVATIONS.update({k: lambda x: x for k in model.ACTIVATIONS})
        model.causal_attention = matmul_attention
    try:
        yield
    finally:
        model._norm, model.causal_attention = saved[0], saved[2]
        model.ACTIVATIONS.update(saved[1])


def variant(kind: str, cfg, gpt, tx):
    """A step function (state, windows) -> (state, metrics) for one kind of variant."""
    if kind == "step":
        return functools.partial(train.train_step, model=gpt, tx=tx, cfg=cfg)

    def step(state, windows):
        x, y = windows[0, :, :-1], windows[0, :, 1:]
        key = jax.random.key(0)
        if kind == "forward":
            return state, {"loss": train.loss_fn(state.params, gpt, x, y, key, True)}
        loss, grads = jax.value_and_grad(train.loss_fn)(state.params, gpt, x, y, key, True)
        # gradients stand in for the parameters, so that nothing is optimised away
        return train.TrainState(state.step, grads, state.opt_state), {"loss": loss}

    return step


KINDS = ("step", "gradients", "forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per", type=int, default=10, help="steps per timed block")
    args, overrides = parser.parse_known_args()
    cpu.use_tcmalloc()  # the allocator `jaxgpt train` runs with
    cfg = load_train_config(args.config, overrides)
    model_cfg = cfg.model_config(cfg.vocab_size or 65)
    mesh = sharding.make_mesh(cfg)
    tx = train.make_optimizer(cfg)
    rng = np.random.default_rng(cfg.seed)
    shape = (1, cfg.batch_size, cfg.block_size + 1)
    windows = jax.device_put(rng.integers(0, model_cfg.vocab_size, shape, dtype=np.int32))
    runs = {}
    for only in (False, True):
        for kind in KINDS:
            name = kind + (" (matmuls only)" if only else "")
            state = train.create_state(model_cfg, tx, mesh, jax.random.key(cfg.seed))
            with matmuls_only(only):
                fn = variant(kind, cfg, model.GPT(model_cfg), tx)
                compiled = jax.jit(fn, donate_argnums=0).lower(state, windows).compile()
            runs[name] = [compiled, state, []]
    for _ in range(args.blocks):
        for run in runs.values():
            compiled, state, times = run
            state, metrics = compiled(state, windows)  # one untimed step per block
            jax.block_until_ready(metrics)
            t0 = time.perf_counter()
            for _ in range(args.per):
                state, metrics = compiled(state, windows)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - t0) / args.per * 1000)
            run[1] = state
    base = runs["step"][2]
    print(f"| variant | ms/step (median of {args.blocks} blocks) | / step (paired) |")
    print("|---|---|---|")
    for name, (_, _, times) in runs.items():
        ratio = statistics.median(a / b for a, b in zip(times, base, strict=True))
        print(f"| {name} | {statistics.median(times):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
