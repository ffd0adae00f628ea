"""experiments/finetune_shakespeare.py end to end from a local Hugging Face GPT-2 directory.

A tiny GPT2LMHeadModel saved by transformers stands in for gpt2-xl (no network): its
weights become the run's initial state (position embeddings cropped to block_size), the
run finetunes on a BPE dataset, saves, samples and resumes, all through the CLI.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import synthetic_text
from test_cli import assert_user_error, run_cli

from jaxgpt import loop
from jaxgpt.config import GPTConfig, load_train_config
from jaxgpt.interop import hf
from jaxgpt.interop.statedict import from_hf
from jaxgpt.prep.tokenizer import GPT2_BPE_ENV

CONFIG = str(Path(__file__).parent.parent / "experiments" / "finetune_shakespeare.py")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A randomly initialised GPT-2 (2 layers, 32 embd, 32 positions) saved by transformers."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder)
    return folder, {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def shakespeare_bpe(tmp_path_factory):
    if not os.environ.get(GPT2_BPE_ENV):
        pytest.skip(f"set {GPT2_BPE_ENV} to a folder with GPT-2's vocab.bpe, encoder.json")
    from jaxgpt.prep.bpe import prepare_shakespeare

    root = tmp_path_factory.mktemp("data")
    prepare_shakespeare(synthetic_text(20000), str(root))
    return root


def overrides(folder, data, out, *extra) -> list[str]:
    return [
        f"--init_from={folder}",
        f"--data_dir={data}",
        f"--out_dir={out}",
        "--block_size=32",  # the config's 1024 is larger than the model's 32 positions
        "--gradient_accumulation_steps=4",  # the config's 32, shortened for the test
        "--eval_iters=4",
        *extra,
    ]


def test_pretrained_weights_become_the_initial_state(tiny_gpt2, shakespeare_bpe, tmp_path):
    folder, state_dict = tiny_gpt2
    cfg = load_train_config(CONFIG, overrides(folder, shakespeare_bpe, tmp_path, "--block_size=16"))
    run = loop.setup(cfg, hf.run_weights)
    assert (run.model_cfg.n_layer, run.model_cfg.n_embd, run.model_cfg.block_size) == (2, 32, 16)
    assert run.model_cfg.vocab_size == 50257 and run.model_cfg.bias
    pretrained = GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)
    expected = from_hf(state_dict, pretrained)
    expected["wpe"]["embedding"] = expected["wpe"]["embedding"][:16]
    got = jax.tree.map(np.asarray, run.state.params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected))
    )


def test_block_size_beyond_the_pretrained_model(tiny_gpt2, shakespeare_bpe, tmp_path, capsys):
    args = overrides(tiny_gpt2[0], shakespeare_bpe, tmp_path, "--block_size=64")
    result = run_cli(capsys, "train", CONFIG, *args)
    assert_user_error(result, "block_size=64", "pretrained model's 32")


def val_losses(out: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "val loss" in line]


def test_finetune_config_runs_end_to_end(tiny_gpt2, shakespeare_bpe, tmp_path, capsys):
    folder = tiny_gpt2[0]
    out = tmp_path / "out"
    args = overrides(folder, shakespeare_bpe, out, "--max_iters=4")
    code, stdout, _ = run_cli(capsys, "train", CONFIG, *args)
    assert code == 0, stdout
    assert f"initializing from pretrained weights: {folder}" in stdout
    losses = val_losses(stdout)
    assert (
        len(losses) == 2
        and losses[1] < losses[0]
        and losses[0] == pytest.approx(np.log(50257), abs=0.1)
    )
    code, stdout, _ = run_cli(
        capsys,
        "sample",
        f"--out_dir={out}",
        "--start=ROMEO:",
        "--num_samples=1",
        "--max_new_tokens=8",
    )
    assert code == 0 and stdout.startswith("ROMEO:")
    code, stdout, _ = run_cli(
        capsys,
        "sample",
        f"--init_from={folder}",
        "--start=ROMEO:",
        "--num_samples=1",
        "--max_new_tokens=8",
    )
    assert code == 0 and stdout.startswith("ROMEO:")
    # the finetuned checkpoint resumes with the same experiment file, at the same loss
    code, stdout, _ = run_cli(
        capsys, "train", CONFIG, *args[1:], "--init_from=resume", "--eval_only=True"
    )
    assert code == 0 and "at iter 4" in stdout and val_losses(stdout) == losses[-1:]
    print(f"\nfinetune from a local HF GPT-2: val loss {losses[0]:.4f} -> {losses[-1]:.4f}")
