"""Weight bridges: nanoGPT ckpt.pt and HF directories in and out of jaxgpt checkpoints.

A nanoGPT run (torch_ref, 3 AdamW steps) is saved the way nanoGPT's train.py saves it,
converted with `jaxgpt convert`, resumed by jaxgpt's own `init_from=resume` path, and
continues with the losses PyTorch gets (optimizer state converted, not reset). Exports
load back exactly, into jaxgpt and into PyTorch; an optimizer=muon state travels only
between jaxgpt checkpoints; bad inputs are one-line errors.
"""

import copy
import dataclasses
import functools
import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cli import assert_user_error, run_cli

torch = pytest.importorskip("torch")

from torch_helpers import perturbed_ref, torch_steps  # noqa: E402

from jaxgpt import loop, train  # noqa: E402
from jaxgpt.config import GPTConfig, TrainConfig, to_dict  # noqa: E402
from jaxgpt.interop import convert as bridge  # noqa: E402
from jaxgpt.interop import torch_ref  # noqa: E402
from jaxgpt.interop.statedict import (  # noqa: E402
    config_from_model_args,
    from_nanogpt,
    nanogpt_param_names,
)
from jaxgpt.model import GPT  # noqa: E402

STEPS = 3  # nanoGPT steps before the checkpoint, and jaxgpt steps after it


def nanogpt_run(data_dir: str, out_dir: str) -> TrainConfig:
    """The run both frameworks do: the tiny dataset, no dropout (so losses compare)."""
    return TrainConfig(
        out_dir=out_dir,
        data_dir=data_dir,
        dataset="tiny",
        batch_size=2,
        block_size=16,
        gradient_accumulation_steps=2,
        n_layer=2,
        n_head=2,
        n_embd=32,
        bias=True,
        dropout=0.0,
        learning_rate=1e-2,
        warmup_iters=2,
        lr_decay_iters=10,
        min_lr=1e-3,
        max_iters=2 * STEPS,
        eval_interval=2 * STEPS,
        eval_iters=2,
    )


def windows(cfg: TrainConfig, steps: range) -> np.ndarray:
    """The tiny dataset's training windows of the given steps, as jaxgpt's loop reads them."""
    from jaxgpt import data

    split = data.load_split(cfg.data_dir, cfg.dataset, "train")
    shape = (cfg.gradient_accumulation_steps, cfg.batch_size)
    return np.stack(
        [data.get_batch(split, cfg.block_size, shape, cfg.seed, "train", s) for s in steps]
    )


@pytest.fixture(scope="module")
def nanogpt_ckpt(data_dir, tmp_path_factory):
    """A nanoGPT-format ckpt.pt after STEPS steps, its meta.pkl, and the torch objects."""
    root = tmp_path_factory.mktemp("nanogpt")
    chars = json.loads((Path(data_dir) / "tiny" / "meta.json").read_text())["chars"]
    cfg = nanogpt_run(data_dir, str(root / "out"))
    model_cfg = cfg.model_config(len(chars))
    ref = perturbed_ref(model_cfg, seed=2).train()
    opt = ref.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2))
    losses = torch_steps(ref, opt, windows(cfg, range(STEPS)), cfg)
    compiled_names = {f"_orig_mod.{k}": v for k, v in ref.state_dict().items()}
    ckpt = {  # what nanoGPT's train.py saves (from a torch.compile'd model)
        "model": compiled_names,
        "optimizer": opt.state_dict(),
        "model_args": dict(
            n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=len(chars)
        )
        | {"dropout": 0.0},
        "iter_num": STEPS,
        "best_val_loss": torch.tensor(2.5),
        "config": to_dict(cfg) | {"device": "cpu", "compile": True, "backend": "nccl"},
    }
    torch.save(ckpt, root / "ckpt.pt")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {}}
    with open(root / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return root, cfg, ref, opt, losses


def clone(ref, opt, cfg: TrainConfig):
    """An independent copy of the nanoGPT run (torch's load_state_dict aliases tensors)."""
    model = torch_ref.GPT(ref.config).train()
    model.load_state_dict(ref.state_dict())
    optimizer = model.configure_optimizers(cfg.weight_decay, 1.0, (cfg.beta1, cfg.beta2))
    optimizer.load_state_dict(copy.deepcopy(opt.state_dict()))
    return model, optimizer


def test_param_order_is_nanogpts(nanogpt_ckpt):
    _, _, ref, _, _ = nanogpt_ckpt
    assert nanogpt_param_names(ref.config) == [n for n, _ in ref.named_parameters()]


def test_converted_nanogpt_run_resumes_with_its_optimizer_state(nanogpt_ckpt, tmp_path, capsys):
    root, cfg, ref, opt, _ = nanogpt_ckpt
    out = tmp_path / "jax"
    code, stdout, _ = run_cli(
        capsys, "convert", "--from", "nanogpt", str(root / "ckpt.pt"), "--to", "jaxgpt", str(out)
    )
    assert code == 0 and "optimizer state yes" in stdout and "tokenizer char" in stdout
    run = loop.setup(dataclasses.replace(cfg, out_dir=str(out), init_from="resume"))
    assert run.iter_num == STEPS and run.best_val_loss == 2.5
    step = jax.jit(
        functools.partial(train.train_step, model=GPT(run.model_cfg), tx=run.tx, cfg=cfg)
    )
    state, losses = run.state, []
    for w in windows(cfg, range(STEPS, 2 * STEPS)):
        state, metrics = step(state, jnp.asarray(w))
        losses.append(float(metrics["loss"]))
    ref_copy, opt_copy = clone(ref, opt, cfg)
    expected = torch_steps(
        ref_copy.train(), opt_copy, windows(cfg, range(STEPS, 2 * STEPS)), cfg, STEPS
    )
    err = np.abs(np.array(losses) - np.array(expected)).max()
    print(f"\nnanoGPT ckpt -> jaxgpt resume, {STEPS} more steps: max abs loss difference {err:.2e}")
    assert err < 1e-4
    # a fresh AdamW state gives visibly different losses: the moments were carried over
    fresh = train.init_state(run.state.params, run.tx).replace(step=run.state.step)
    fresh = step(fresh, jnp.asarray(windows(cfg, [STEPS])[0]))[0]
    fresh_loss = float(step(fresh, jnp.asarray(windows(cfg, [STEPS + 1])[0]))[1]["loss"])
    assert abs(fresh_loss - expected[1]) > 1e-3


@pytest.fixture(scope="module")
def converted(nanogpt_ckpt, tmp_path_factory):
    """The nanoGPT run as a jaxgpt checkpoint."""
    root = nanogpt_ckpt[0]
    out = tmp_path_factory.mktemp("converted") / "out"
    bridge.convert("nanogpt", str(root / "ckpt.pt"), "jaxgpt", str(out))
    return out


def same_tree(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


def test_round_trip_through_nanogpt_is_exact(converted, tmp_path):
    start = bridge.load_checkpoint(str(converted))
    bridge.convert("jaxgpt", str(converted), "nanogpt", str(tmp_path / "nano"))
    bridge.convert("nanogpt", str(tmp_path / "nano"), "jaxgpt", str(tmp_path / "back"))
    back = bridge.load_checkpoint(str(tmp_path / "back"))
    assert same_tree(start.params, back.params)
    assert same_tree(start.moments.mu, back.moments.mu)
    assert same_tree(start.moments.nu, back.moments.nu)
    assert (back.moments.count, back.iter_num, back.tokenizer) == (
        start.moments.count,
        start.iter_num,
        start.tokenizer,
    )


def test_nanogpt_export_loads_in_pytorch_and_resumes_there(nanogpt_ckpt, converted, tmp_path):
    _, cfg, ref, opt, _ = nanogpt_ckpt
    path = bridge.convert("jaxgpt", str(converted), "nanogpt", str(tmp_path))[1]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = torch_ref.GPT(config_from_model_args(ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])  # strict: exactly nanoGPT's keys
    optimizer = model.configure_optimizers(cfg.weight_decay, 1.0, (cfg.beta1, cfg.beta2))
    optimizer.load_state_dict(ckpt["optimizer"])
    assert (Path(tmp_path) / "meta.pkl").is_file()
    batch = windows(cfg, range(STEPS, STEPS + 1))
    ref_copy, opt_copy = clone(ref, opt, cfg)
    torch_steps(model, optimizer, batch, cfg, STEPS)
    torch_steps(ref_copy, opt_copy, batch, cfg, STEPS)
    for (n, p), q in zip(model.named_parameters(), ref_copy.parameters()):
        assert torch.equal(p, q), n  # bit-identical: the same state, the same step


def test_round_trip_through_hf_is_exact(converted, tmp_path):
    start = bridge.load_checkpoint(str(converted))
    bridge.convert("jaxgpt", str(converted), "hf", str(tmp_path / "hf"))
    bridge.convert("hf", str(tmp_path / "hf"), "jaxgpt", str(tmp_path / "back"))
    back = bridge.load_checkpoint(str(tmp_path / "back"))
    assert same_tree(start.params, back.params) and back.tokenizer == start.tokenizer


def test_scan_layout_round_trip(converted, tmp_path):
    start = bridge.load_checkpoint(str(converted))
    scan = dataclasses.replace(start, config=dataclasses.replace(start.config, scan_layers=True))
    bridge.save_checkpoint(scan, str(tmp_path / "scan"))
    back = bridge.load_checkpoint(str(tmp_path / "scan"))
    assert same_tree(start.params, back.params) and same_tree(start.moments.mu, back.moments.mu)


def test_converted_checkpoint_samples_the_text_nanogpt_would(nanogpt_ckpt, converted, capsys):
    _, _, ref, _, _ = nanogpt_ckpt
    chars = bridge.load_checkpoint(str(converted)).tokenizer["chars"]
    prompt = "The king"
    idx = torch.tensor([[chars.index(c) for c in prompt]])
    expected = "".join(chars[i] for i in ref.eval().generate(idx, 24, top_k=1)[0].tolist())
    code, out, _ = run_cli(
        capsys,
        "sample",
        f"--out_dir={converted}",
        f"--start={prompt}",
        "--num_samples=1",
        "--max_new_tokens=24",
        "--temperature=0",
    )
    assert code == 0 and out.split("\n---------------")[0] == expected


@pytest.fixture(scope="module")
def muon_run(data_dir, tmp_path_factory):
    """A jaxgpt checkpoint of optimizer=muon after 4 steps."""
    from conftest import tiny_run

    out = tmp_path_factory.mktemp("muon") / "out"
    cfg = tiny_run(data_dir, str(out), optimizer="muon", max_iters=4, eval_interval=4)
    loop.run_training(cfg)
    return out


def test_muon_state_travels_to_jaxgpt_whole_and_not_to_nanogpt(muon_run, tmp_path, capsys):
    """jaxgpt -> jaxgpt carries Muon's optimizer state bit for bit; a nanoGPT export (torch
    AdamW state only) says in one note that it is not carried and writes none; HF works."""
    start = bridge.load_checkpoint(str(muon_run))
    assert start.moments is None and start.opt_state is not None
    code, out, _ = convert(capsys, "jaxgpt", muon_run, "jaxgpt", tmp_path / "again")
    assert code == 0 and "optimizer state yes" in out and "note:" not in out
    again = bridge.load_checkpoint(str(tmp_path / "again"))
    assert same_tree(again.opt_state, start.opt_state) and same_tree(again.params, start.params)
    code, out, _ = convert(capsys, "jaxgpt", muon_run, "nanogpt", tmp_path / "nano")
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert code == 0 and "optimizer state no" in out, out
    assert notes == ["note: Muon's optimizer state is not carried: ckpt.pt holds AdamW's only"]
    ckpt = torch.load(tmp_path / "nano" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in ckpt
    assert convert(capsys, "jaxgpt", muon_run, "hf", tmp_path / "hf")[0] == 0
    bridge.convert("hf", str(tmp_path / "hf"), "jaxgpt", str(tmp_path / "back"))
    assert same_tree(bridge.load_checkpoint(str(tmp_path / "back")).params, start.params)
    # another layout (scan_layers) than the state's: a note, and a fresh Muon state
    scan = dataclasses.replace(start, config=dataclasses.replace(start.config, scan_layers=True))
    bridge.save_checkpoint(scan, str(tmp_path / "scan"))
    assert scan.notes[-1] == "the optimizer state does not fit this model's layout: not carried"
    assert same_tree(bridge.load_checkpoint(str(tmp_path / "scan")).params, start.params)


# --- one-line errors -------------------------------------------------------------------


def convert(capsys, src_kind, src, dst_kind, dst, *extra):
    return run_cli(
        capsys, "convert", "--from", src_kind, str(src), "--to", dst_kind, str(dst), *extra
    )


def test_wrong_kind_of_file(tmp_path, capsys):
    text = tmp_path / "ckpt.pt"
    text.write_text("not a checkpoint")
    assert_user_error(convert(capsys, "nanogpt", text, "jaxgpt", tmp_path / "o"), "not a PyTorch")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    result = convert(capsys, "nanogpt", tmp_path / "other.pt", "jaxgpt", tmp_path / "o")
    assert_user_error(result, "not a nanoGPT checkpoint")
    assert_user_error(convert(capsys, "hf", tmp_path, "jaxgpt", tmp_path / "o"), "no config.json")
    assert not (tmp_path / "o").exists()


def edited_ckpt(nanogpt_ckpt, tmp_path, edit) -> Path:
    ckpt = torch.load(nanogpt_ckpt[0] / "ckpt.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    return tmp_path / "ckpt.pt"


def test_missing_key_and_shape_mismatch(nanogpt_ckpt, tmp_path, capsys):
    key = "_orig_mod.transformer.h.1.ln_2.weight"
    path = edited_ckpt(nanogpt_ckpt, tmp_path, lambda c: c["model"].pop(key))
    result = convert(capsys, "nanogpt", path, "jaxgpt", tmp_path / "o")
    assert_user_error(result, "missing key transformer.h.1.ln_2.weight")
    path = edited_ckpt(nanogpt_ckpt, tmp_path, lambda c: c["model_args"].update(n_embd=64))
    result = convert(capsys, "nanogpt", path, "jaxgpt", tmp_path / "o")
    assert_user_error(result, "transformer.wte.weight has shape", "n_embd=64")


def test_character_model_needs_its_vocabulary(nanogpt_ckpt, tmp_path, capsys):
    path = edited_ckpt(nanogpt_ckpt, tmp_path, lambda c: None)  # no meta.pkl beside it
    assert_user_error(convert(capsys, "nanogpt", path, "jaxgpt", tmp_path / "o"), "--meta")
    meta = nanogpt_ckpt[0] / "meta.pkl"
    assert convert(capsys, "nanogpt", path, "jaxgpt", tmp_path / "o", "--meta", str(meta))[0] == 0
    big = tmp_path / "big.pkl"
    big.write_bytes(pickle.dumps({"itos": {i: chr(40 + i) for i in range(200)}}))
    result = convert(capsys, "nanogpt", path, "jaxgpt", tmp_path / "o2", "--meta", str(big))
    assert_user_error(result, "200 characters", "vocab_size is")


def test_existing_destination_is_not_overwritten(converted, tmp_path, capsys):
    before = sorted(p.name for p in converted.iterdir())
    assert_user_error(convert(capsys, "jaxgpt", converted, "jaxgpt", converted), "already holds")
    assert sorted(p.name for p in converted.iterdir()) == before


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_file_or_non_empty_destination_is_refused(converted, tmp_path, capsys):
    """Refused before the source is read, for every format; nothing there is changed."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine too")
    nano = tmp_path / "nano"
    nano.mkdir()
    (nano / "ckpt.pt").write_bytes(b"an older checkpoint")
    before = files(tmp_path)
    for kind in ("jaxgpt", "hf", "nanogpt"):
        result = convert(capsys, "jaxgpt", converted, kind, a_file)
        assert_user_error(result, f"destination {a_file} is a file")
        result = convert(capsys, "jaxgpt", converted, kind, full)
        assert_user_error(result, f"destination {full} already holds 1 file(s)")
    result = convert(capsys, "jaxgpt", converted, "nanogpt", nano / "ckpt.pt")
    assert_user_error(result, f"{nano / 'ckpt.pt'} already exists")
    result = convert(capsys, "jaxgpt", converted, "nanogpt", a_file / "ckpt.pt")
    assert_user_error(result, f"{a_file} is a file")
    assert files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file", "full", "nano",
    ]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert(capsys, "jaxgpt", converted, "jaxgpt", empty)[0] == 0  # an empty folder


def test_summary_says_what_was_written(converted, tmp_path, capsys):
    """A HF directory holds the weights only; nanoGPT's ckpt.pt and a jaxgpt checkpoint
    hold the iteration and AdamW's state."""
    code, out, _ = convert(capsys, "jaxgpt", converted, "hf", tmp_path / "hf")
    assert code == 0 and out.strip().endswith("weights only (no iter, no optimizer state)"), out
    assert "optimizer state yes" not in out
    code, out, _ = convert(capsys, "jaxgpt", converted, "nanogpt", tmp_path / "nano")
    assert code == 0 and out.strip().endswith(f"iter {STEPS}, optimizer state yes"), out
    code, out, _ = convert(capsys, "hf", tmp_path / "hf", "jaxgpt", tmp_path / "back")
    assert code == 0 and out.strip().endswith("iter 0, optimizer state no"), out


def test_hub_name_offline_is_one_line(tmp_path, capsys, monkeypatch):
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    result = run_cli(capsys, "sample", "--init_from=gpt2", "--max_new_tokens=1")
    assert_user_error(result, "openai-community/gpt2", "--init_from=PATH")


def test_converted_params_do_not_alias_torch_memory():
    ref = perturbed_ref(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    params = from_nanogpt(ref.state_dict(), ref.config)
    before = params["wte"]["embedding"].copy()
    with torch.no_grad():
        ref.transformer.wte.weight.add_(1.0)  # training the torch model on
    assert np.array_equal(params["wte"]["embedding"], before)
