"""Tokenizers: a character vocabulary (shakespeare_char) and GPT-2's BPE.

A tokenizer is described by a JSON-able dict (stored as a dataset's meta.json and in
every checkpoint), so a checkpoint samples text with no dataset on disk.
"""

import os
from pathlib import Path


class TokenizerError(ValueError):
    """Text the tokenizer cannot encode, or a tokenizer that cannot be built."""


class CharTokenizer:
    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def meta(self) -> dict:
        return {"kind": "char", "vocab_size": self.vocab_size, "chars": self.chars}

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise TokenizerError(
                f"characters not in the model's vocabulary: {''.join(unknown)!r} "
                f"({len(unknown)} of them)"
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


GPT2_EOT = 50256
GPT2_BPE_ENV = "JAXGPT_GPT2_BPE_DIR"  # a folder with GPT-2's vocab.bpe and encoder.json


class BPETokenizer:
    """GPT-2's byte-pair encoding through tiktoken ("gpt2").

    When tiktoken cannot download its files, the encoding is built from a local folder
    holding GPT-2's `vocab.bpe` and `encoder.json` (argument or $JAXGPT_GPT2_BPE_DIR).
    """

    vocab_size = 50257
    eot_token = GPT2_EOT

    def __init__(self, bpe_dir: str | None = None):
        self.enc = _gpt2_encoding(bpe_dir or os.environ.get(GPT2_BPE_ENV))

    def meta(self) -> dict:
        return {"kind": "bpe", "encoding": "gpt2", "vocab_size": self.vocab_size}

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def _gpt2_encoding(bpe_dir: str | None):
    try:
        import tiktoken
    except ImportError:
        raise TokenizerError("GPT-2 BPE needs tiktoken: pip install tiktoken") from None
    if bpe_dir:
        return _local_gpt2_encoding(tiktoken, Path(bpe_dir))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: the download of the BPE files failed
        raise TokenizerError(
            f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); offline, point "
            f"${GPT2_BPE_ENV} at a folder with GPT-2's vocab.bpe and encoder.json"
        ) from None


def _local_gpt2_encoding(tiktoken, folder: Path):
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = folder / "vocab.bpe", folder / "encoder.json"
    for f in (vocab_bpe, encoder_json):
        if not f.is_file():
            raise TokenizerError(f"missing {f} for the local GPT-2 BPE")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json)
    )
    # tiktoken's own "gpt2" definition, with the ranks read from local files
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
    )


def from_meta(meta: dict):
    """The tokenizer a dataset's meta.json or a checkpoint describes."""
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return BPETokenizer()
    raise TokenizerError(f"unknown tokenizer kind {kind!r} in meta")
