"""Shared fixtures: a tiny character dataset and tiny model/run configs."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from jaxgpt.config import GPTConfig, TrainConfig
from jaxgpt.prep.chars import prepare_char

SHAKESPEARE = os.environ.get("JAXGPT_SHAKESPEARE")  # .ci/run points it at tiny Shakespeare


def shakespeare_path() -> str:
    if not SHAKESPEARE or not Path(SHAKESPEARE).is_file():
        pytest.skip("set JAXGPT_SHAKESPEARE to tiny Shakespeare's input.txt (.ci/run does)")
    return SHAKESPEARE


def snapshot(folder: Path) -> dict:
    """Every path below folder: a file's sha256, a folder "/" (to tell what a run changed)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "/"
        for p in sorted(Path(folder).rglob("*"))
    }


def synthetic_text(n_chars: int = 20000, seed: int = 0) -> str:
    """Pseudo-English from a fixed word list: learnable, deterministic, no files needed."""
    words = "the king and queen of hearts shall speak to thee my lord now good night".split()
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words, size=rng.integers(3, 9))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> str:
    """One persistent XLA compilation cache for the session, shared with the `jaxgpt train`
    child processes some tests start: the tiny model's train step takes ~17 s to compile
    on the 2-core machine and ~1 s to load from the cache."""
    import jax

    path = str(tmp_path_factory.mktemp("jax_cache"))
    settings = {
        "jax_compilation_cache_dir": path,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A data folder holding the `tiny` character dataset."""
    root = tmp_path_factory.mktemp("data")
    prepare_char(synthetic_text(), str(root), "tiny")
    return str(root)


TINY_MODEL = GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=32, bias=True)

# the model options after nanoGPT, one at a time, and the combinations the Llama family and
# the speedrun use (GPTConfig keys; tests apply them to their own base configs)
OPTIONS = {
    "rope": dict(pos_encoding="rope", rope_theta=500.0),
    "rmsnorm": dict(norm="rmsnorm", norm_eps=1e-6),
    "rmsnorm_no_scale": dict(norm="rmsnorm", norm_scale=False),
    "layernorm_no_scale": dict(norm_scale=False),
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=48),
    "qk_norm": dict(qk_norm=True),
    "qk_norm_no_scale": dict(qk_norm=True, qk_norm_scale=False),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=3.0),
    "zero_init": dict(zero_init_proj=True, tie_embeddings=False),
}
LLAMA = dict(
    pos_encoding="rope", rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu",
    mlp_hidden=48, n_kv_head=2, tie_embeddings=False, bias=False,
)  # fmt: skip
SPEEDRUN = dict(
    pos_encoding="rope", norm="rmsnorm", norm_scale=False, mlp="relu2", qk_norm=True,
    tie_embeddings=False, logit_softcap=3.0, zero_init_proj=True, bias=False,
)  # fmt: skip
COMBOS = {"llama": LLAMA, "speedrun": SPEEDRUN}


def tiny_run(data_dir: str, out_dir: str, **overrides) -> TrainConfig:
    """A run config that trains in seconds on the `tiny` dataset."""
    base = dict(
        out_dir=out_dir,
        data_dir=data_dir,
        dataset="tiny",
        eval_interval=10,
        eval_iters=4,
        log_interval=5,
        batch_size=4,
        block_size=16,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=0.1,
        bias=True,
        learning_rate=3e-3,
        max_iters=20,
        warmup_iters=5,
        lr_decay_iters=40,
        min_lr=3e-4,
        always_save_checkpoint=True,
    )
    base.update(overrides)
    return TrainConfig(**base)
