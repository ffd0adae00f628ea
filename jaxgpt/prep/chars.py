"""Dataset preparation: text -> `<data_dir>/<name>/{train.bin, val.bin, meta.json}`.

shakespeare_char reproduces nanoGPT's data/shakespeare_char/prepare.py exactly (sorted
character vocabulary, first 90% train, last 10% val: 65 symbols, 1,003,854 train and
111,540 val tokens); `char` does the same for any UTF-8 text.
"""

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import numpy as np

from jaxgpt.data import DataError, dataset_dir, write_split
from jaxgpt.prep.tokenizer import CharTokenizer

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_ENV = "JAXGPT_SHAKESPEARE"  # path to tiny Shakespeare's input.txt


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxgpt"


def shakespeare_text(input_path: str | None = None) -> str:
    """Tiny Shakespeare: --input, else $JAXGPT_SHAKESPEARE, else the cache, else download."""
    path = input_path or os.environ.get(SHAKESPEARE_ENV)
    if path:
        return read_text(path)
    cached = cache_dir() / "tinyshakespeare.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=15) as response:
            raw = response.read()
    except OSError as e:
        raise DataError(
            f"cannot download tiny Shakespeare ({e.__class__.__name__}); offline, pass "
            f"--input path/to/input.txt (or set ${SHAKESPEARE_ENV})"
        ) from None
    if hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
        raise DataError(f"downloaded tiny Shakespeare has an unexpected sha256 ({SHAKESPEARE_URL})")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.replace(cached)
    return raw.decode("utf-8")


def read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--input {path}: no such file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--input {path} is not UTF-8 text ({e.reason}, byte {e.start})") from None


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """First train_fraction of the characters for training, the rest for validation."""
    n = len(text)
    return text[: int(n * train_fraction)], text[int(n * train_fraction) :]


def write_dataset(folder: Path, train_ids, val_ids, meta: dict) -> dict:
    """Write the two bins and meta.json; returns a summary with the token counts."""
    folder.mkdir(parents=True, exist_ok=True)
    write_split(folder / "train.bin", np.asarray(train_ids))
    write_split(folder / "val.bin", np.asarray(val_ids))
    counts = {"train_tokens": len(train_ids), "val_tokens": len(val_ids)}
    (folder / "meta.json").write_text(json.dumps({**meta, **counts}))
    return {
        "dir": str(folder),
        "vocab_size": meta["vocab_size"],
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
    }


def prepare_char(text: str, data_dir: str, name: str) -> dict:
    """Character-level dataset: sorted vocabulary of the whole text, 90/10 split."""
    if not text:
        raise DataError("the input text is empty")
    tok = CharTokenizer.from_text(text)
    train, val = split_text(text)
    train_ids, val_ids = (np.array(tok.encode(s), dtype=np.uint16) for s in (train, val))
    return write_dataset(dataset_dir(data_dir, name), train_ids, val_ids, tok.meta())
