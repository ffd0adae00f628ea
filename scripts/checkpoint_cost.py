"""What checkpoint integrity costs: the manifest's sha256 at save and its check at restore.

    python scripts/checkpoint_cost.py [--models=cpu,gpt2] [--reps=3] [--dir=/tmp/ckpt-cost]

For each model (cpu: experiments/shakespeare_char_cpu.py's shape, 4 layers, 4 heads, 128
embd, vocab 65; gpt2: GPT-2 124M, 12 layers, 12 heads, 768 embd, vocab 50304, block 1024,
randomly initialised), a train state with its AdamW moments (random, see trained_like) is
saved and restored as jaxgpt does (checkpoint.save + wait_until_finished, which includes
writing the manifest in orbax's callback; checkpoint.restore of the verified step).
Measured apart, on the same files: writing the manifest (checkpoint.write_manifest) and
verifying it (checkpoint.damage). Medians of --reps repetitions after a warm-up, each into
a fresh step folder; the files are in the page cache, as right after a save. Prints a
markdown table. tcmalloc preloaded as the jaxgpt command does.
"""

import argparse
import shutil
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxgpt import checkpoint, sharding, train
from jaxgpt.config import TrainConfig
from jaxgpt.perf import cpu

MODELS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=True),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}
LABELS = {
    "cpu": "CPU config (4 layers, 128 embd, vocab 65)",
    "gpt2": "GPT-2 124M (12 layers, 768 embd, vocab 50304)",
}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def trained_like(opt_state):
    """AdamW's moments are zeros at initialisation, which zstd shrinks to nothing: give
    them random values, as a trained run's are, so the checkpoint has a trained size."""
    leaves, treedef = jax.tree.flatten(opt_state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            x + 1e-3 * jax.random.normal(k, x.shape, x.dtype)
            if x.ndim and jnp.issubdtype(x.dtype, jnp.floating)
            else x
            for x, k in zip(leaves, keys)
        ],
    )


def measure(name: str, reps: int, root: Path) -> dict:
    cfg = TrainConfig(**MODELS[name], dropout=0.0)
    model_cfg = cfg.model_config(cfg.vocab_size)
    mesh = sharding.make_mesh(cfg)
    tx = train.make_optimizer(cfg)
    state = train.create_state(model_cfg, tx, mesh, jax.random.key(0))
    state = state.replace(opt_state=trained_like(state.opt_state))
    jax.block_until_ready(state)
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    rows = {k: [] for k in ("save", "restore", "manifest", "verify", "bytes")}
    for rep in range(reps + 1):  # the first is a warm-up, not counted
        step = rep + 1
        mngr = checkpoint.manager(str(out), keep=reps + 2)

        def save(mngr=mngr, step=step):
            checkpoint.save(mngr, step, state, {"iter_num": step})
            mngr.wait_until_finished()

        t_save = timed(save)
        mngr.close()
        step_dir = out / str(step)
        size = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())
        t_manifest = timed(lambda step_dir=step_dir: checkpoint.write_manifest(step_dir))
        t_verify = timed(lambda step_dir=step_dir: checkpoint.damage(step_dir))
        t_restore = timed(
            lambda step=step: jax.block_until_ready(checkpoint.restore(str(out), state, step)[1])
        )
        if rep:
            for k, v in zip(rows, (t_save, t_restore, t_manifest, t_verify, size)):
                rows[k].append(v)
        shutil.rmtree(step_dir)  # one checkpoint on disk at a time
    shutil.rmtree(out, ignore_errors=True)
    return {k: statistics.median(v) for k, v in rows.items()}


def table(results: dict) -> str:
    head = (
        "| model | checkpoint | save (manifest included) | manifest | manifest share of "
        "save | restore | verify | verify share of restore + verify |"
    )
    lines = [head, "|" + " --- |" * 8]
    for name, r in results.items():
        gb = r["bytes"] / 1e9
        lines.append(
            f"| {LABELS[name]} | {r['bytes'] / 1e6:.1f} MB | {r['save']:.3f} s | "
            f"{r['manifest']:.3f} s ({r['manifest'] / gb:.2f} s/GB) | "
            f"{100 * r['manifest'] / r['save']:.0f}% | {r['restore']:.3f} s | "
            f"{r['verify']:.3f} s ({r['verify'] / gb:.2f} s/GB) | "
            f"{100 * r['verify'] / (r['restore'] + r['verify']):.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cpu,gpt2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dir", default="/tmp/ckpt-cost")
    args = p.parse_args()
    cpu.use_tcmalloc()  # the allocator the jaxgpt command runs with (re-executes this script)
    root = Path(args.dir)
    results = {m: measure(m, args.reps, root) for m in args.models.split(",")}
    print(table(results))


if __name__ == "__main__":
    main()
