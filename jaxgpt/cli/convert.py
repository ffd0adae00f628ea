"""`jaxgpt convert`: a model from one format to another (interop/convert.py)."""

import argparse

from jaxgpt.cli.keyhelp import HELP_FORMAT
from jaxgpt.interop.bundle import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a model between jaxgpt, HF and nanoGPT",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("--from", dest="src_format", required=True, choices=FORMATS)
    p.add_argument("src", help="HF directory or gpt2*, nanoGPT ckpt.pt (or its folder), out_dir")
    p.add_argument("--to", dest="dst_format", required=True, choices=FORMATS)
    p.add_argument("dst", help="destination (a new folder, or ckpt.pt for nanogpt)")
    p.add_argument("--meta", help="nanoGPT's meta.pkl: the character vocabulary")


def run(args: argparse.Namespace) -> int:
    from jaxgpt.interop import convert

    bundle, written, optimizer = convert.convert_reporting(
        args.src_format, args.src, args.dst_format, args.dst, args.meta
    )
    for note in bundle.notes:
        print(f"note: {note}")
    print(summary(bundle, written, args.dst_format, optimizer))
    return 0


def summary(bundle, written, kind: str, optimizer: bool) -> str:
    """What was written: the model, its tokenizer, and for a checkpoint format the run's
    progress and whether an optimizer state went with it (a HF directory holds neither)."""
    c = bundle.config
    line = (
        f"wrote {written} ({kind}): {c.n_layer} layers, {c.n_head} heads, "
        f"{c.n_embd} embd, block {c.block_size}, vocab {c.vocab_size}, "
        f"tokenizer {bundle.tokenizer['kind']}, "
    )
    if kind == "hf":
        return line + "weights only (no iter, no optimizer state)"
    return line + f"iter {bundle.iter_num}, optimizer state {'yes' if optimizer else 'no'}"
