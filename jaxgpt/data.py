"""Token datasets on disk and the batches drawn from them.

A dataset is a folder `<data_dir>/<name>/` with nanoGPT's layout: `train.bin` and
`val.bin` (flat uint16 token ids, no header) and `meta.json` (the tokenizer and the token
counts, checked on load: a malformed one is a one-line DataError). Batches are
random windows of block_size + 1 tokens read from a memmap. The windows of step s are a
pure function of (seed, split, step): a resumed run reads exactly the batches an
uninterrupted run would have read, and each process of a multi-host run can read only
its own rows of the global batch.
"""

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")


class DataError(ValueError):
    """A dataset that is missing or malformed; the CLI prints it as one line, exit 2."""


def dataset_dir(data_dir: str, dataset: str) -> Path:
    return Path(data_dir) / dataset


def load_meta(data_dir: str, dataset: str) -> dict:
    path = dataset_dir(data_dir, dataset) / "meta.json"
    if not path.is_file():
        raise DataError(
            f"no dataset at {path.parent} (missing meta.json): run `jaxgpt prepare {dataset}` "
            "or set --data_dir"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): run `jaxgpt prepare` again") from None
    check_meta(meta, path)
    return meta


TOKENIZER_KINDS = ("char", "bpe", "hf", "ids")  # see prep/tokenizer.py


def check_meta(meta, path: Path) -> None:
    """A dataset's meta.json: a tokenizer kind, a vocab_size that uint16 ids can hold, the
    characters of a char vocabulary, and token counts that are counts."""
    again = "run `jaxgpt prepare` again"
    if not isinstance(meta, dict):
        raise DataError(f"{path} holds a JSON {type(meta).__name__}, not an object: {again}")
    if meta.get("kind") not in TOKENIZER_KINDS:
        raise DataError(
            f"{path}: kind={meta.get('kind')!r} is not a tokenizer kind "
            f"({', '.join(TOKENIZER_KINDS)}): {again}"
        )
    vocab = meta.get("vocab_size")
    if not _is_count(vocab) or not 1 <= vocab <= 2**16:
        raise DataError(f"{path}: vocab_size={vocab!r} must be an int in [1, 65536]: {again}")
    chars = meta.get("chars")
    if meta["kind"] == "char" and not (
        isinstance(chars, str | list)
        and len(chars) == vocab
        and all(isinstance(c, str) for c in chars)
    ):
        raise DataError(f"{path}: a char vocabulary needs `chars`, {vocab} characters: {again}")
    if meta["kind"] == "hf" and not isinstance(meta.get("json"), str):
        raise DataError(f"{path}: an hf tokenizer needs its tokenizer.json text as `json`: {again}")
    for key in (f"{s}_tokens" for s in SPLITS):
        if key in meta and not (_is_count(meta[key]) and meta[key] >= 0):
            raise DataError(f"{path}: {key}={meta[key]!r} must be an int >= 0: {again}")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_split(
    data_dir: str,
    dataset: str,
    split: str,
    vocab_size: int | None = None,
    n_tokens: int | None = None,
):
    """The split's tokens as a read-only uint16 memmap, checked for size and vocabulary.

    n_tokens: the count meta.json records (`<split>_tokens`, written by jaxgpt prepare);
    a file of another size is truncated or of another dtype.
    """
    path = dataset_dir(data_dir, dataset) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"missing {path}: run `jaxgpt prepare {dataset}` or set --data_dir")
    size = path.stat().st_size
    if size % 2:
        raise DataError(f"{path} has an odd size ({size} bytes): not a uint16 token file")
    if n_tokens is not None and size != 2 * n_tokens:
        raise DataError(
            f"{path} has {size:,} bytes but meta.json says {n_tokens:,} uint16 tokens "
            f"({2 * n_tokens:,} bytes): truncated or another dtype; run `jaxgpt prepare` again"
        )
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if vocab_size is not None and len(data):
        # a cheap spot check on 8 runs of 1024 tokens: catches another tokenizer's bins and
        # most wrong dtypes (the high halves of int32/float values); runs, not a strided
        # sample, whose even stride would see only the low halves
        starts = np.linspace(0, max(len(data) - 1024, 0), 8).astype(int)
        sample = np.concatenate([data[i : i + 1024] for i in starts])
        if int(sample.max()) >= vocab_size:
            raise DataError(
                f"{path} holds token id {int(sample.max())} >= vocab_size {vocab_size}: "
                "wrong dtype or a dataset of another tokenizer"
            )
    return data


def write_split(path: Path, ids: np.ndarray) -> None:
    """Write token ids as uint16 through a temporary file, so no half-written bin remains."""
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) > np.iinfo(np.uint16).max:
        raise DataError(f"token id {int(ids.max())} does not fit in uint16")
    tmp = path.with_suffix(path.suffix + ".tmp")
    ids.astype(np.uint16).tofile(tmp)
    tmp.replace(path)


def window_starts(
    n_tokens: int, block_size: int, shape: tuple, seed: int, split: str, step: int, stream: int = 0
) -> np.ndarray:
    """Start offsets of the windows of (split, step), array of `shape`: a pure function.

    stream 0 draws training batches, stream 1 the fixed evaluation batches.
    """
    if n_tokens <= block_size:
        raise DataError(
            f"the {split} split has {n_tokens} tokens, too few for block_size {block_size}"
        )
    rng = np.random.default_rng((seed, stream, SPLITS.index(split), step))
    return rng.integers(0, n_tokens - block_size, size=shape)


def get_batch(
    data: np.ndarray,
    block_size: int,
    shape: tuple,
    seed: int,
    split: str,
    step: int,
    rows: slice = slice(None),
    stream: int = 0,
) -> np.ndarray:
    """Token windows of length block_size + 1 for the global batch of `shape` (the last
    axis of `shape` is the batch axis), this process's `rows` of it only.

    Inputs are windows[..., :-1] and targets windows[..., 1:]. Returns int32 of shape
    shape[:-1] + (rows, block_size + 1).
    """
    starts = window_starts(len(data), block_size, shape, seed, split, step, stream)[..., rows]
    offsets = starts[..., None] + np.arange(block_size + 1)  # (..., rows, T + 1)
    return np.asarray(data[offsets.reshape(-1)], dtype=np.int32).reshape(offsets.shape)
