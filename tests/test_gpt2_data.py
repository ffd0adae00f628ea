"""GPT-2 BPE datasets: nanoGPT's shakespeare figures, and corpora through HF datasets.

Reads GPT-2's BPE files from $JAXGPT_GPT2_BPE_DIR and the small web-text corpus from
$JAXGPT_WEBTEXT_SAMPLE (.ci/run sets both); skips with the reason otherwise.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shakespeare_path
from test_cli import assert_user_error, run_cli

from jaxgpt.prep.tokenizer import GPT2_BPE_ENV, BPETokenizer


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    folder = os.environ.get(GPT2_BPE_ENV)
    if not folder or not (Path(folder) / "vocab.bpe").is_file():
        pytest.skip(f"set {GPT2_BPE_ENV} to a folder with GPT-2's vocab.bpe, encoder.json")
    return BPETokenizer(folder)


@pytest.fixture(scope="module")
def webtext() -> list[Path]:
    folder = os.environ.get("JAXGPT_WEBTEXT_SAMPLE")
    if not folder or not Path(folder).is_dir():
        pytest.skip("set JAXGPT_WEBTEXT_SAMPLE to a folder of .txt documents (.ci/run does)")
    return sorted(Path(folder).glob("*.txt"))


def test_prepare_shakespeare_matches_nanogpt(bpe, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "prepare", "shakespeare", "--input", shakespeare_path(), "--data_dir", str(tmp_path)
    )
    assert code == 0
    folder = tmp_path / "shakespeare"
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert (len(train), len(val)) == (301_966, 36_059)  # nanoGPT's figures
    assert "train 301,966 tokens, val 36,059 tokens" in out
    text = Path(shakespeare_path()).read_text()
    assert bpe.decode(train) + bpe.decode(val) == text
    assert json.loads((folder / "meta.json").read_text())["kind"] == "bpe"


def documents(bins: list[np.ndarray], bpe: BPETokenizer) -> list[str]:
    """Split bins at the end-of-text token back into documents."""
    docs = []
    for ids in bins:
        ends = np.flatnonzero(ids == BPETokenizer.eot_token)
        assert len(ends) and ends[-1] == len(ids) - 1  # every document ends with EOT
        docs += [bpe.decode(d[:-1]) for d in np.split(ids, ends + 1)[:-1]]
    return docs


def read_bins(folder: Path) -> list[np.ndarray]:
    return [np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]


def test_corpus_from_local_files(bpe, webtext, tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    args = ["prepare", "openwebtext", "--data_dir", str(tmp_path), "--name"]
    # two tokenizer processes, forked from a fresh process (this one has JAX threads running)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "jaxgpt.cli", *args, "txt", "--num_proc", "2"]
    subprocess.run(cmd + ["--input", str(webtext[0].parent)], env=env, check=True)
    train, val = read_bins(tmp_path / "txt")
    texts = [p.read_text(encoding="utf-8") for p in webtext]
    assert sorted(documents([train, val], bpe)) == sorted(texts)
    assert len(documents([val], bpe)) == math.ceil(0.0005 * len(texts))  # nanoGPT's split
    assert len(train) + len(val) == sum(len(bpe.encode(t)) + 1 for t in texts)
    # the same documents as jsonl, tokenized in this process, give the same bins
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code = run_cli(capsys, *args, "jsonl", "--num_proc", "1", "--input", str(jsonl))[0]
    assert code == 0
    for a, b in zip(read_bins(tmp_path / "txt"), read_bins(tmp_path / "jsonl")):
        np.testing.assert_array_equal(a, b)


def test_corpus_errors(bpe, tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    base = ["prepare", "openwebtext", "--data_dir", str(tmp_path)]
    result = run_cli(capsys, *base, "--hf_dataset", "no-such/corpus-xyz")
    assert_user_error(result, "no-such/corpus-xyz", "--input")
    result = run_cli(capsys, *base, "--input", str(tmp_path / "nothing*.txt"))
    assert_user_error(result, "no .txt/.jsonl files")
