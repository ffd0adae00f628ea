"""Tokenizers: a character vocabulary (shakespeare_char), GPT-2's BPE, and the tokenizer a
Hugging Face model directory carries (its tokenizer.json, through HF `tokenizers`).

A tokenizer is described by a JSON-able dict (stored as a dataset's meta.json and in
every checkpoint), so a checkpoint samples text with no dataset on disk. A model that
came without a tokenizer gets kind "ids": its prompts and samples are token ids.
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


class HFTokenizer:
    """A Hugging Face fast tokenizer, carried whole: meta {"kind": "hf", "vocab_size": N,
    "json": <tokenizer.json's text>, "config": <tokenizer_config.json> or None}.

    encode adds what the tokenizer's post-processor adds (Llama's BOS), as transformers
    does for a prompt; decode leaves special tokens out of the text.
    """

    def __init__(self, json_text: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError(
                "this tokenizer needs HF tokenizers: pip install 'jaxgpt[gpt2]'"
            ) from None
        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises its own Exception for bad JSON
            raise TokenizerError(f"not a tokenizer.json: {str(e)[:120]}") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def meta_of(json_text: str, config: dict | None = None) -> dict:
        vocab_size = HFTokenizer(json_text).vocab_size
        return {"kind": "hf", "vocab_size": vocab_size, "json": json_text, "config": config}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


class IdsTokenizer:
    """No tokenizer (a model converted from a directory without one): a prompt is token
    ids separated by spaces or commas, and a sample prints as ids."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        words = text.replace(",", " ").split()
        if not words or not all(w.isdigit() and int(w) < self.vocab_size for w in words):
            raise TokenizerError(
                "this model carries no tokenizer: give the prompt as token ids below "
                f"{self.vocab_size}, e.g. --start='1 15 27'"
            )
        return [int(w) for w in words]

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def from_meta(meta: dict):
    """The tokenizer a dataset's meta.json or a checkpoint describes."""
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return BPETokenizer()
    if kind == "hf":
        return HFTokenizer(meta["json"])
    if kind == "ids":
        return IdsTokenizer(meta["vocab_size"])
    raise TokenizerError(f"unknown tokenizer kind {kind!r} in meta")
