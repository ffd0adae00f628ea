"""Datasets: nanoGPT's shakespeare_char figures, pure batches, bad input."""

import json

import numpy as np
import pytest
from conftest import shakespeare_path, synthetic_text

from jaxgpt import data
from jaxgpt.prep.chars import prepare_char, shakespeare_text


def test_shakespeare_char_reproduces_nanogpt(tmp_path):
    summary = prepare_char(shakespeare_text(shakespeare_path()), str(tmp_path), "shakespeare_char")
    assert (summary["vocab_size"], summary["train_tokens"], summary["val_tokens"]) == (
        65,
        1_003_854,
        111_540,
    )
    folder = tmp_path / "shakespeare_char"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["chars"] == sorted(meta["chars"]) and meta["chars"][0] == "\n"
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    assert len(train) == 1_003_854
    text = "".join(meta["chars"][i] for i in train[:15])
    assert text == "First Citizen:\n"


def test_char_dataset_roundtrip(tmp_path):
    text = synthetic_text(5000)
    prepare_char(text, str(tmp_path), "mine")
    meta = data.load_meta(str(tmp_path), "mine")
    ids = np.concatenate([data.load_split(str(tmp_path), "mine", s) for s in data.SPLITS])
    assert "".join(meta["chars"][i] for i in ids) == text


def test_batches_are_a_pure_function_of_seed_step_split(data_dir):
    train = data.load_split(data_dir, "tiny", "train")
    a = data.get_batch(train, 16, (2, 4), seed=1, split="train", step=7)
    b = data.get_batch(train, 16, (2, 4), seed=1, split="train", step=7)
    c = data.get_batch(train, 16, (2, 4), seed=1, split="train", step=8)
    assert a.shape == (2, 4, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rows = data.get_batch(train, 16, (2, 4), seed=1, split="train", step=7, rows=slice(2, 4))
    np.testing.assert_array_equal(rows, a[:, 2:4])
    # every window is a contiguous slice of the split, targets shifted by one
    start = int(data.window_starts(len(train), 16, (2, 4), 1, "train", 7)[0, 0])
    np.testing.assert_array_equal(a[0, 0], train[start : start + 17])


def test_truncated_bin_is_rejected(tmp_path):
    prepare_char(synthetic_text(3000), str(tmp_path), "t")
    path = tmp_path / "t" / "val.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(data.DataError, match="odd size"):
        data.load_split(str(tmp_path), "t", "val")


def test_wrong_vocabulary_bin_is_rejected(tmp_path):
    prepare_char(synthetic_text(3000), str(tmp_path), "t")
    (tmp_path / "t" / "train.bin").write_bytes(np.full(3000, 999, np.uint16).tobytes())
    with pytest.raises(data.DataError, match="vocab_size"):
        data.load_split(str(tmp_path), "t", "train", vocab_size=30)


def test_block_larger_than_split_is_rejected(data_dir):
    val = data.load_split(data_dir, "tiny", "val")
    with pytest.raises(data.DataError, match="too few"):
        data.get_batch(val, len(val), (1,), seed=0, split="val", step=0)
