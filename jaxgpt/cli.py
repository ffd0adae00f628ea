"""The `jaxgpt` command: parses arguments and wires the package together.

    jaxgpt prepare shakespeare_char [--input FILE] [--data_dir DIR]
    jaxgpt train [CONFIG.py] [--key=value ...]
    jaxgpt sample --out_dir DIR [--start TEXT | --start FILE:path] [--num_samples N] ...
    jaxgpt plot OUT_DIR [OUT_DIR ...] [--output PNG]

User mistakes (a bad key, missing data, an unknown character) end with one line on
stderr and exit status 2; a run stopped by non-finite losses exits 1, one stopped by
Ctrl-C exits 130 after saving its checkpoint.
"""

import argparse
import sys
from pathlib import Path

from jaxgpt.checkpoint import CheckpointError
from jaxgpt.config import ConfigError
from jaxgpt.data import DataError
from jaxgpt.faults import NonFiniteError
from jaxgpt.tokenizer import TokenizerError

USER_ERRORS = (ConfigError, DataError, TokenizerError, CheckpointError)


def cmd_prepare(args: argparse.Namespace) -> None:
    from jaxgpt import prepare

    if args.dataset == "shakespeare_char":
        text = prepare.shakespeare_text(args.input)
        summary = prepare.prepare_char(text, args.data_dir, args.name or "shakespeare_char")
    elif args.dataset == "char":
        if not args.input or not args.name:
            raise DataError("prepare char needs --input FILE and --name NAME")
        summary = prepare.prepare_char(prepare.read_text(args.input), args.data_dir, args.name)
    else:
        raise DataError(f"unknown dataset {args.dataset!r}: use shakespeare_char or char")
    print(
        f"wrote {summary['dir']}: vocab {summary['vocab_size']:,}, "
        f"train {summary['train_tokens']:,} tokens, val {summary['val_tokens']:,} tokens"
    )


def cmd_train(argv: list[str]) -> int:
    from jaxgpt.config import load_train_config

    config_file = argv[0] if argv and not argv[0].startswith("--") else None
    cfg = load_train_config(config_file, argv[1:] if config_file else argv)
    from jaxgpt import loop

    run = loop.setup(cfg)
    loop.train_loop(run)
    return loop.exit_code(run)


def read_start(start: str) -> str:
    """nanoGPT's --start: the text itself, or FILE:path to read it from a file."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise DataError(f"--start {start}: no such file")
        return path.read_text(encoding="utf-8")
    return start


def cmd_sample(args: argparse.Namespace) -> None:
    import jax
    import numpy as np

    from jaxgpt import checkpoint, tokenizer
    from jaxgpt.model import abstract_params, unbox
    from jaxgpt.sample import SamplingParams, stream_tokens

    try:
        sp = SamplingParams(args.temperature, args.top_k or None, args.top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _, meta = checkpoint.restore_meta(args.out_dir)
    model_cfg = checkpoint.model_config(meta)
    tok = tokenizer.from_meta(meta["tokenizer"])
    prompt = tok.encode(read_start(args.start))
    if not prompt:
        raise DataError("--start is empty: give at least one character")
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), unbox(abstract_params(model_cfg))
    )
    _, params, _ = checkpoint.restore_params(args.out_dir, abstract)
    prompts = np.tile(np.asarray(prompt, np.int32), (args.num_samples, 1))
    stream = args.num_samples == 1 and sys.stdout.isatty()
    chunks = []
    printed = ""
    for toks in stream_tokens(params, model_cfg, prompts, args.max_new_tokens, sp, args.seed):
        chunks.append(toks)
        if stream:
            text = tok.decode(np.concatenate([prompts] + chunks, axis=1)[0])
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text
    out = np.concatenate([prompts] + chunks, axis=1)
    for row in out:
        print(tok.decode(row) if not stream else "")
        print("---------------")


def cmd_plot(args: argparse.Namespace) -> None:
    from jaxgpt import plot

    output = args.output or str(Path(args.out_dirs[0]) / "plot.png")
    plot.plot_runs(args.out_dirs, output)
    print(f"wrote {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgpt", description="GPT in JAX, nanoGPT's way.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize a dataset into train.bin/val.bin/meta.json")
    p.add_argument("dataset", help="shakespeare_char | char")
    p.add_argument("--input", help="local text file (else a cached copy, else download)")
    p.add_argument("--data_dir", default="data", help="where datasets go (default: data)")
    p.add_argument("--name", help="dataset name under data_dir (required for `char`)")

    sub.add_parser("train", help="train a model: jaxgpt train [CONFIG.py] [--key=value ...]")

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--out_dir", default="out", help="checkpoint folder (default: out)")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path")
    p.add_argument("--num_samples", type=int, default=10)
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200, help="0 = no top-k filtering")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=1337)

    p = sub.add_parser("plot", help="plot loss and learning rate of one or several runs")
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="run folders (metrics.jsonl)")
    p.add_argument("--output", help="PNG to write (default: OUT_DIR/plot.png of the first)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = parser.parse_args(argv)
        commands = {"prepare": cmd_prepare, "sample": cmd_sample, "plot": cmd_plot}
        commands[args.command](args)
    except USER_ERRORS as e:
        print(f"jaxgpt: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:  # the run diverged: not the user's input, exit 1
        print(f"jaxgpt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
