"""Llama-family weights: transformers' LlamaForCausalLM directories in and out of jaxgpt.

A randomly initialised LlamaForCausalLM (grouped-query 4/2 heads, untied, rope_theta
1234.5, eps 1e-6) with a byte-level BPE tokenizer trained offline is saved by transformers
(sharded); jaxgpt reads it, computes transformers' logits (1e-5) and greedy tokens, trains
from it, samples text through its tokenizer, and writes it back as a directory transformers
loads. Bad inputs and models a Llama cannot hold are one-line errors. The tests print the
figures reached (`pytest -s tests/test_llama.py`).
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from conftest import LLAMA as LLAMA_OPTIONS
from conftest import TINY_MODEL, synthetic_text
from test_cli import assert_user_error, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import torch_helpers  # noqa: E402, F401  (one torch thread per test process)

from jaxgpt import loop  # noqa: E402
from jaxgpt.config import GPTConfig, load_train_config  # noqa: E402
from jaxgpt.generation import generate  # noqa: E402
from jaxgpt.interop import convert as bridge  # noqa: E402
from jaxgpt.interop import hf  # noqa: E402
from jaxgpt.interop.bundle import Bundle  # noqa: E402
from jaxgpt.model import GPT, init_params  # noqa: E402
from jaxgpt.prep.tokenizer import HFTokenizer  # noqa: E402

V, POSITIONS = 300, 32
LLAMA = dict(
    vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
    rope_theta=1234.5, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
)  # fmt: skip
X = np.random.default_rng(1).integers(2, V, (2, POSITIONS))  # every position, no BOS/EOS


def train_tokenizer():
    """A byte-level BPE of V - 4 tokens, <s> first and added before every text (Llama's
    BOS), trained on the test's word list. (GPT2Tokenizer adds a token of its own.)"""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=V - 4,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(synthetic_text(4000).splitlines() + ["ROMEO: JULIET:"], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def perturbed(model):
    """The model in eval mode with its norm scales (ones at init) and biases (zeros) made
    random, so that a norm or bias put in the wrong place changes the logits."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(the saved directory, the transformers model, its tokenizer)."""
    torch.manual_seed(0)
    model = perturbed(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder, max_shard_size="100KB")  # sharded, with an index
    tok = train_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
    fast.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder, model, tok


def hf_logits(model, idx) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(idx)).logits.numpy()


def jax_logits(bundle: Bundle, idx) -> np.ndarray:
    return np.asarray(GPT(bundle.config).apply({"params": bundle.params}, idx))


def test_llama_directory_computes_transformers_logits(llama):
    folder, model, _ = llama
    bundle = hf.load_dir(folder)
    c = bundle.config
    assert (c.pos_encoding, c.norm, c.mlp, c.n_head, c.kv_heads) == (
        "rope",
        "rmsnorm",
        "swiglu",
        4,
        2,
    )
    assert (c.rope_theta, c.norm_eps, c.tie_embeddings, c.block_size) == (1234.5, 1e-6, False, 32)
    assert bundle.tokenizer["kind"] == "hf" and bundle.tokenizer["bos_token_id"] == 0
    err = np.abs(jax_logits(bundle, X) - hf_logits(model, X)).max()
    print(f"\nLlama dir -> jaxgpt, logits vs transformers (GQA 4/2, untied): max abs {err:.2e}")
    assert err < 1e-5


def convert(capsys, src_kind, src, dst_kind, dst):
    return run_cli(capsys, "convert", "--from", src_kind, str(src), "--to", dst_kind, str(dst))


def test_round_trip_through_jaxgpt(llama, tmp_path, capsys):
    folder, model, _ = llama
    code, out, _ = convert(capsys, "hf", folder, "jaxgpt", tmp_path / "jax")
    assert code == 0 and "tokenizer hf" in out and "note: tokenizer from" in out, out
    code, out, _ = convert(capsys, "jaxgpt", tmp_path / "jax", "hf", tmp_path / "hf")
    assert code == 0, out
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    err = np.abs(hf_logits(back, X) - hf_logits(model, X)).max()
    print(f"\nLlama dir -> jaxgpt -> Llama dir -> transformers: logits max abs {err:.2e}")
    assert err < 1e-5
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    source = json.loads((folder / "config.json").read_text())
    keys = ("rope_parameters", "rms_norm_eps", "num_key_value_heads", "intermediate_size")
    keys += ("tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id")
    assert {k: exported[k] for k in keys} == {k: source[k] for k in keys}
    text = "the king and queen"
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(text).input_ids == (
        transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids
    )
    first, again = hf.load_dir(folder), hf.load_dir(tmp_path / "hf")
    assert first.tokenizer == again.tokenizer and first.config == again.config
    for a, b in zip(*(sorted(hf.read_state_dict(d).items()) for d in (folder, tmp_path / "hf"))):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), a[0]  # bitwise, every tensor


def test_tied_biased_bfloat16_llama_round_trip(tmp_path):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        **LLAMA | dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)
    )
    model = perturbed(transformers.LlamaForCausalLM(config))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # as most Llamas are stored
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    bundle = hf.load_dir(tmp_path / "bf16")
    assert bundle.config.tie_embeddings and bundle.config.bias and "lm_head" not in bundle.params
    assert bundle.tokenizer == {
        "kind": "ids",
        "vocab_size": V,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    err = np.abs(jax_logits(bundle, X) - hf_logits(model.eval(), X)).max()
    hf.save_dir(bundle, tmp_path / "out")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    back_err = np.abs(hf_logits(back, X) - hf_logits(model, X)).max()
    print(
        f"\ntied Llama with biases (bfloat16 file): logits vs transformers {err:.2e}, "
        f"after jaxgpt -> Llama dir {back_err:.2e}"
    )
    assert err < 1e-5 and back_err < 1e-5
    assert "lm_head.weight" not in hf.read_state_dict(tmp_path / "out")  # tied, as HF saves it


def test_jaxgpt_model_with_llama_options_exports_as_llama(tmp_path):
    """A model trained in jaxgpt (conftest's Llama combination, random init) -> transformers."""
    config = GPTConfig(**dataclasses.asdict(TINY_MODEL) | LLAMA_OPTIONS)
    rng = np.random.default_rng(0)  # the norm scales made random (ones at init)
    params = jax.tree.map(
        lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32),
        init_params(config, jax.random.key(0)),
    )
    bundle = Bundle(params, config, {"kind": "char", "vocab_size": 3, "chars": list("abc")})
    hf.save_dir(bundle, tmp_path / "out")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    idx = X[:, : config.block_size] % config.vocab_size
    err = np.abs(hf_logits(model, idx) - jax_logits(bundle, idx)).max()
    print(f"\njaxgpt model with the Llama options -> LlamaForCausalLM: logits max abs {err:.2e}")
    assert err < 1e-5 and hf.load_dir(tmp_path / "out").tokenizer == bundle.tokenizer


def hf_greedy(model, prompt: np.ndarray, n: int) -> np.ndarray:
    """transformers' generate, greedy, no stop token; every prompt token attended (the
    JAX-NOTES trap: an explicit attention_mask, a pad id that is not in the prompt)."""
    idx = torch.from_numpy(prompt)
    settings = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=1
    )
    mask = torch.ones_like(idx)
    return model.generate(idx, attention_mask=mask, generation_config=settings).numpy()


def hf_cropped_greedy(model, prompt: np.ndarray, n: int, block: int) -> np.ndarray:
    """Greedy decoding with nanoGPT's semantics over the transformers model: each step sees
    the last `block` tokens at positions 0..block-1."""
    idx = torch.from_numpy(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -block:]).logits[:, -1]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx.numpy()


def jax_greedy(bundle: Bundle, prompt: np.ndarray, n: int) -> np.ndarray:
    out = generate(bundle.params, bundle.config, prompt, max_new_tokens=n, temperature=0.0)
    return np.stack(out.tokens)


def test_greedy_generation_matches_transformers(llama):
    folder, model, _ = llama
    bundle = hf.load_dir(folder)
    prompt = np.random.default_rng(4).integers(2, V, (2, 5))
    # within max_position_embeddings, transformers' own generate (it does not crop)
    expected = hf_greedy(model, prompt, POSITIONS - 5)
    np.testing.assert_array_equal(jax_greedy(bundle, prompt, POSITIONS - 5), expected)
    # past block_size jaxgpt keeps nanoGPT's crop, which transformers' generate does not do:
    # compared with the same crop over the transformers model
    expected = hf_cropped_greedy(model, prompt, 2 * POSITIONS, POSITIONS)
    np.testing.assert_array_equal(jax_greedy(bundle, prompt, 2 * POSITIONS), expected)
    print(
        f"\ngreedy generation vs transformers: {POSITIONS - 5} tokens identical to generate(), "
        f"{2 * POSITIONS} (past block_size {POSITIONS}) identical to a cropping loop"
    )


def val_losses(out: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "val loss" in line]


def test_init_from_llama_directory_trains(llama, data_dir, tmp_path, capsys):
    folder = llama[0]
    args = [f"--init_from={folder}", f"--data_dir={data_dir}", "--dataset=tiny"]
    args += ["--block_size=16", "--batch_size=4", "--eval_iters=2", "--log_interval=2"]
    args += ["--max_iters=4", "--eval_interval=4", "--learning_rate=3e-3", "--warmup_iters=0"]
    run = loop.setup(
        load_train_config(None, args + [f"--out_dir={tmp_path / 'a'}"]), hf.run_weights
    )
    assert run.model_cfg == dataclasses.replace(hf.load_dir(folder).config, block_size=16)
    expected = hf.load_dir(folder).params
    got = jax.tree.map(np.asarray, run.state.params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected))
    )
    code, out, _ = run_cli(capsys, "train", *args, f"--out_dir={tmp_path / 'b'}")
    assert code == 0 and f"initializing from pretrained weights: {folder}" in out, out
    losses = val_losses(out)
    print(f"\ntrain from a Llama dir: val loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert len(losses) == 2 and losses[1] < losses[0]
    assert bridge.load_checkpoint(str(tmp_path / "b")).config.mlp == "swiglu"


def sample_text(capsys, *source) -> str:
    args = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=12", "--temperature=0"]
    code, out, err = run_cli(capsys, "sample", *source, *args)
    assert code == 0, err
    return out.split("\n---------------")[0]


def test_sample_through_the_carried_tokenizer(llama, tmp_path, capsys):
    folder, model, tok = llama
    prompt = np.array([tok.encode("ROMEO:").ids])
    assert prompt[0, 0] == 0  # the tokenizer's BOS, added as transformers adds it
    expected = tok.decode(hf_greedy(model, prompt, 12)[0].tolist(), skip_special_tokens=True)
    assert sample_text(capsys, f"--init_from={folder}") == expected
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert convert(capsys, "hf", copy, "jaxgpt", tmp_path / "jax")[0] == 0
    shutil.rmtree(copy)  # the checkpoint alone carries the tokenizer
    assert sample_text(capsys, f"--out_dir={tmp_path / 'jax'}") == expected
    print(f"\njaxgpt sample through the Llama dir's tokenizer: {expected!r}")
    assert expected.startswith("ROMEO:") and len(expected) > len("ROMEO:")


def without_tokenizer(folder, dst):
    """A copy of the Llama directory with only config.json and the weights."""
    dst.mkdir()
    for f in folder.iterdir():
        if not f.name.startswith("tokenizer"):
            shutil.copy(f, dst)
    return dst


def test_llama_without_tokenizer_samples_ids(llama, tmp_path, capsys):
    folder = without_tokenizer(llama[0], tmp_path / "bare")
    code, out, _ = convert(capsys, "hf", folder, "jaxgpt", tmp_path / "jax")
    assert code == 0 and "has no tokenizer" in out and "tokenizer ids" in out, out
    result = run_cli(capsys, "sample", f"--init_from={folder}", "--start=ROMEO:")
    assert_user_error(result, "carries no tokenizer", "--start='1 15 27'")
    code, out, _ = run_cli(
        capsys, "sample", f"--init_from={folder}", "--start=5 6 7", "--num_samples=1",
        "--max_new_tokens=3",
    )  # fmt: skip
    ids = out.split("\n---------------")[0].split()
    assert code == 0 and ids[:3] == ["5", "6", "7"] and len(ids) == 6


def test_tokenizer_built_by_autotokenizer(llama, tmp_path):
    """A directory with a slow tokenizer's files (vocab.json, merges.txt) and no
    tokenizer.json: transformers' AutoTokenizer builds the fast one that is carried."""
    folder, _, tok = llama
    dst = without_tokenizer(folder, tmp_path / "slow")
    tok.model.save(str(dst))  # vocab.json, merges.txt
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    carried = HFTokenizer(hf.load_dir(dst).tokenizer["json"])
    text = "the king and queen of hearts"
    assert carried.encode(text) == tok.encode(text, add_special_tokens=False).ids


# --- one-line errors -------------------------------------------------------------------


def edited(folder, dst, edit):
    """A copy of the Llama directory with its config.json edited."""
    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


CONFIG_ERRORS = {
    "rope_scaling": (
        lambda c: c.update(rope_parameters=dict(rope_type="llama3", rope_theta=5e5, factor=8.0)),
        ("rope_type='llama3'", "unscaled"),
    ),
    "legacy_rope_scaling": (
        lambda c: c.update(rope_parameters=None, rope_scaling=dict(type="linear", factor=2.0)),
        ("rope_type='linear'",),
    ),
    "some_biases": (lambda c: c.update(attention_bias=True), ("attention_bias=True", "mlp_bias")),
    "activation": (lambda c: c.update(hidden_act="gelu"), ("hidden_act='gelu'", "silu")),
    "head_dim": (lambda c: c.update(head_dim=32), ("head_dim=32", "16")),
    "model_type": (lambda c: c.update(model_type="mistral"), ("model_type='mistral'", "llama")),
    "missing_key": (lambda c: c.pop("intermediate_size"), ("lacks intermediate_size",)),
    "shape": (
        lambda c: c.update(intermediate_size=128),
        ("model.layers.0.mlp.gate_proj.weight has shape (96, 64)", "(128, 64)"),
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_what_jaxgpt_cannot_compute_is_refused(llama, tmp_path, capsys, case):
    edit, fragments = CONFIG_ERRORS[case]
    folder = edited(llama[0], tmp_path / "in", edit)
    assert_user_error(convert(capsys, "hf", folder, "jaxgpt", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_tensor(llama, tmp_path, capsys):
    from safetensors.numpy import save_file

    folder = shutil.copytree(llama[0], tmp_path / "in")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    shard = folder / index["weight_map"][name]
    tensors = hf.read_state_dict(folder)
    save_file(
        {k: tensors[k] for k, f in index["weight_map"].items() if f == shard.name and k != name},
        shard,
    )
    result = convert(capsys, "hf", folder, "jaxgpt", tmp_path / "out")
    assert_user_error(result, f"missing key {name}")


TOKENIZER_ERRORS = {  # file -> its text: what the error names
    "tokenizer.json": ("{not json", ("tokenizer.json", "not a tokenizer.json")),
    "tokenizer_config.json": ("{not json", ("tokenizer_config.json", "is not JSON")),
    "slow_files": (json.dumps({"tokenizer_class": "GPT2Tokenizer"}), ("AutoTokenizer",)),
}


@pytest.mark.parametrize("case", list(TOKENIZER_ERRORS))
def test_broken_tokenizer_files(llama, tmp_path, capsys, case):
    text, fragments = TOKENIZER_ERRORS[case]
    folder = without_tokenizer(llama[0], tmp_path / "in")
    (folder / ("tokenizer_config.json" if case == "slow_files" else case)).write_text(text)
    assert_user_error(convert(capsys, "hf", folder, "jaxgpt", tmp_path / "out"), *fragments)


TINY = dict(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=16, bias=False)
EXPORT_ERRORS = {  # GPTConfig options: what the error names
    "relu2": (dict(pos_encoding="rope", mlp="relu2"), ("LlamaForCausalLM", "mlp=relu2")),
    "qk_norm": (dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True),
                ("LlamaForCausalLM", "qk_norm=True")),
    "softcap": (dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", logit_softcap=3.0),
                ("logit_softcap=3.0",)),
    "rope_layernorm": (dict(pos_encoding="rope", mlp="swiglu"), ("norm=layernorm",)),
    "no_scale": (dict(pos_encoding="rope", norm="rmsnorm", norm_scale=False, mlp="swiglu"),
                 ("norm_scale=False",)),
    "gpt2_swiglu": (dict(mlp="swiglu"), ("GPT2LMHeadModel", "mlp=swiglu")),
    "gpt2_gqa": (dict(n_kv_head=1), ("GPT2LMHeadModel", "n_kv_head=1")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXPORT_ERRORS))
def test_export_refuses_what_transformers_cannot_hold(case, tmp_path, capsys, monkeypatch):
    options, fragments = EXPORT_ERRORS[case]
    config = GPTConfig(**TINY | options)
    # the checkpoint reader is stubbed: the export refuses from the config alone
    monkeypatch.setattr(bridge, "load_checkpoint", lambda _: Bundle({}, config, {"kind": "ids"}))
    result = convert(capsys, "jaxgpt", tmp_path / "ckpt", "hf", tmp_path / "out")
    assert_user_error(result, *fragments, "keep this model as a jaxgpt checkpoint")
    assert not (tmp_path / "out").exists()
