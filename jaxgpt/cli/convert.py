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

    bundle, written = convert.convert(
        args.src_format, args.src, args.dst_format, args.dst, args.meta
    )
    for note in bundle.notes:
        print(f"note: {note}")
    c = bundle.config
    muon_state = bundle.opt_state is not None and args.dst_format == "jaxgpt"
    print(
        f"wrote {written} ({args.dst_format}): {c.n_layer} layers, {c.n_head} heads, "
        f"{c.n_embd} embd, block {c.block_size}, vocab {c.vocab_size}, "
        f"tokenizer {bundle.tokenizer['kind']}, iter {bundle.iter_num}, "
        f"optimizer state {'yes' if bundle.moments is not None or muon_state else 'no'}"
    )
    return 0
