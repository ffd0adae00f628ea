"""`jaxgpt prepare`: tokenize a dataset into train.bin, val.bin and meta.json (prep/)."""

import argparse

from jaxgpt.cli.keyhelp import HELP_FORMAT
from jaxgpt.data import DataError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a dataset into train.bin/val.bin/meta.json",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("dataset", help="shakespeare_char | char | shakespeare | openwebtext")
    p.add_argument(
        "--input",
        help="local text file (openwebtext: a file, folder or glob of .txt/.jsonl documents)",
    )
    p.add_argument("--data_dir", default="data", help="where datasets go")
    p.add_argument("--name", help="dataset name under data_dir (required for `char`)")
    p.add_argument("--hf_dataset", help="openwebtext: a HF dataset name (default openwebtext)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenizer processes")
    p.add_argument("--val_fraction", type=float, default=0.0005, help="openwebtext val split")


def run(args: argparse.Namespace) -> int:
    from jaxgpt.prep import chars

    if args.dataset == "shakespeare_char":
        text = chars.shakespeare_text(args.input)
        summary = chars.prepare_char(text, args.data_dir, args.name or "shakespeare_char")
    elif args.dataset == "char":
        if not args.input or not args.name:
            raise DataError("prepare char needs --input FILE and --name NAME")
        summary = chars.prepare_char(chars.read_text(args.input), args.data_dir, args.name)
    elif args.dataset == "shakespeare":
        from jaxgpt.prep import bpe

        text = chars.shakespeare_text(args.input)
        summary = bpe.prepare_shakespeare(text, args.data_dir, args.name or "shakespeare")
    elif args.dataset == "openwebtext":
        from jaxgpt.prep import bpe

        summary = bpe.prepare_corpus(
            args.data_dir,
            args.name or "openwebtext",
            args.hf_dataset,
            args.input,
            args.num_proc,
            args.val_fraction,
        )
    else:
        raise DataError(
            f"unknown dataset {args.dataset!r}: use shakespeare_char, char, shakespeare "
            "or openwebtext"
        )
    print(
        f"wrote {summary['dir']}: vocab {summary['vocab_size']:,}, "
        f"train {summary['train_tokens']:,} tokens, val {summary['val_tokens']:,} tokens"
    )
    return 0
