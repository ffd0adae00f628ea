"""GPT-2 BPE datasets: tiny Shakespeare, OpenWebText and any text corpus.

`shakespeare` tokenizes tiny Shakespeare with GPT-2's BPE after nanoGPT's 90/10 character
split (301,966 train / 36,059 val tokens). `openwebtext` follows nanoGPT's OpenWebText
recipe for any corpus: documents from a Hugging Face dataset (openwebtext by default) or
local .txt files (one document each) / .jsonl files (a "text" field per line), loaded
through HF `datasets`; a shuffled train/val split (val fraction 0.0005, seed 2357);
tokenization in num_proc processes with the end-of-text token 50256 after every
document; and each split written as one flat uint16 bin through a memmap, shard by
shard, behind a progress bar. The bins are interchangeable with nanoGPT's.
"""

import contextlib
import glob
import json
import os
from pathlib import Path

import numpy as np

from jaxgpt.data import DataError, dataset_dir
from jaxgpt.prep.chars import split_text, write_dataset
from jaxgpt.prep.tokenizer import GPT2_BPE_ENV, BPETokenizer

OWT_VAL_FRACTION = 0.0005
OWT_SEED = 2357
WRITE_SHARDS = 1024  # nanoGPT writes its bins in 1024 slices


def prepare_shakespeare(text: str, data_dir: str, name: str = "shakespeare") -> dict:
    """GPT-2 BPE of the first 90% / last 10% of the characters, as nanoGPT."""
    if not text:
        raise DataError("the input text is empty")
    tok = BPETokenizer()
    train, val = split_text(text)
    train_ids, val_ids = (np.array(tok.encode(s), dtype=np.uint16) for s in (train, val))
    return write_dataset(dataset_dir(data_dir, name), train_ids, val_ids, tok.meta())


def local_files(pattern: str) -> list[str]:
    """--input: a file, a directory (its .txt/.jsonl/.json files) or a glob pattern."""
    path = Path(pattern)
    if path.is_dir():
        files = [str(p) for p in sorted(path.iterdir()) if p.suffix in (".txt", ".jsonl", ".json")]
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"--input {pattern}: no .txt/.jsonl files found")
    if len({Path(f).suffix in (".jsonl", ".json") for f in files}) > 1:
        raise DataError(f"--input {pattern}: mix of text and jsonl files; pass one kind")
    return files


def load_documents(hf_dataset: str | None, input_pattern: str | None, cache_dir: str | None):
    """A `datasets.Dataset` with a "text" column: local files, or a dataset from the hub."""
    try:
        import datasets
    except ImportError:
        raise DataError("BPE corpora need HF datasets: pip install 'jaxgpt[gpt2]'") from None
    if input_pattern:
        files = local_files(input_pattern)
        if files[0].endswith((".jsonl", ".json")):
            ds = datasets.load_dataset("json", data_files=files, cache_dir=cache_dir)
        else:  # every file is one document
            ds = datasets.load_dataset(
                "text", data_files=files, sample_by="document", cache_dir=cache_dir
            )
        source = input_pattern
    else:
        source = hf_dataset or "openwebtext"
        try:
            with _quiet_hub():
                ds = datasets.load_dataset(source, cache_dir=cache_dir)
        except Exception as e:  # offline, unknown name, ...: one line for the user
            raise DataError(
                f"cannot load the HF dataset {source!r} ({type(e).__name__}); offline, "
                "pass --input with local .txt or .jsonl files"
            ) from None
    ds = ds["train"]
    if "text" not in ds.column_names:
        raise DataError(f"{source} has no 'text' column (columns: {ds.column_names})")
    return ds


@contextlib.contextmanager
def _quiet_hub():
    """Silence the hub's retry warnings: an unreachable hub ends in our one-line error."""
    from datasets.utils import logging as ds_logging
    from huggingface_hub.utils import logging as hub_logging

    levels = ds_logging.get_verbosity(), hub_logging.get_verbosity()
    ds_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])


def _tokenize(example: dict, bpe_dir: str | None) -> dict:
    ids = _tokenizer(bpe_dir).encode(example["text"])
    ids.append(BPETokenizer.eot_token)  # the document boundary
    return {"ids": ids, "len": len(ids)}


_TOKENIZERS: dict = {}


def _tokenizer(bpe_dir: str | None) -> BPETokenizer:
    """One tokenizer per worker process (tiktoken's encoders are built once)."""
    if bpe_dir not in _TOKENIZERS:
        _TOKENIZERS[bpe_dir] = BPETokenizer(bpe_dir)
    return _TOKENIZERS[bpe_dir]


def write_bin(split, path: Path, desc: str) -> int:
    """Concatenate a tokenized split's ids into a uint16 memmap, shard by shard."""
    from tqdm import tqdm

    n = int(np.sum(split["len"], dtype=np.int64))
    tmp = path.with_suffix(".bin.tmp")
    tmp.write_bytes(b"")
    if n:
        arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(n,))
        shards = min(WRITE_SHARDS, len(split))
        offset = 0
        for i in tqdm(range(shards), desc=f"writing {desc}", unit="shard"):
            shard = split.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
            ids = np.concatenate(list(shard["ids"]))
            arr[offset : offset + len(ids)] = ids
            offset += len(ids)
        arr.flush()
        del arr
    tmp.replace(path)
    return n


def prepare_corpus(
    data_dir: str,
    name: str = "openwebtext",
    hf_dataset: str | None = None,
    input_pattern: str | None = None,
    num_proc: int | None = None,
    val_fraction: float = OWT_VAL_FRACTION,
    seed: int = OWT_SEED,
    cache_dir: str | None = None,
) -> dict:
    """Tokenize a corpus into `<data_dir>/<name>/{train.bin,val.bin,meta.json}`."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val_fraction={val_fraction} must be in (0, 1)")
    num_proc = num_proc or max(1, (os.cpu_count() or 2) // 2)
    bpe_dir = os.environ.get(GPT2_BPE_ENV)
    tok = BPETokenizer(bpe_dir)  # fails early, in this process, when no BPE is available
    docs = load_documents(hf_dataset, input_pattern, cache_dir)
    if len(docs) < 2:
        raise DataError(f"the corpus has {len(docs)} document(s): a split needs at least 2")
    split = docs.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    splits = {"train": split["train"], "val": split["test"]}
    folder = dataset_dir(data_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for key, ds in splits.items():
        procs = min(num_proc, len(ds))
        tokenized = ds.map(
            _tokenize,
            fn_kwargs={"bpe_dir": bpe_dir},
            remove_columns=ds.column_names,
            desc=f"tokenizing {key}",
            num_proc=procs if procs > 1 else None,  # datasets forks a pool even for 1
        )
        counts[key] = write_bin(tokenized, folder / f"{key}.bin", key)
    (folder / "meta.json").write_text(json.dumps(tok.meta()))
    return {
        "dir": str(folder),
        "vocab_size": tok.vocab_size,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
    }
