"""The `jaxgpt` command: parses arguments and wires the package together.

    jaxgpt prepare shakespeare_char [--input FILE] [--data_dir DIR]
    jaxgpt train [CONFIG.py] [--key=value ...]
    jaxgpt sample --out_dir DIR [--start TEXT | --start FILE:path] [--num_samples N]
        [--stop TEXT] [--stop_token ID] [--kv_cache=False] ...

User mistakes (a bad key, missing data, an unknown character) end with one line on
stderr and exit status 2.
"""

import argparse
import sys
from pathlib import Path

from jaxgpt.checkpoint import CheckpointError
from jaxgpt.config import ConfigError
from jaxgpt.data import DataError
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


def cmd_train(argv: list[str]) -> None:
    from jaxgpt.config import load_train_config

    config_file = argv[0] if argv and not argv[0].startswith("--") else None
    cfg = load_train_config(config_file, argv[1:] if config_file else argv)
    from jaxgpt.loop import run_training

    run_training(cfg)


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

    from jaxgpt import checkpoint, tokenizer
    from jaxgpt.generation import generate
    from jaxgpt.model import abstract_params, unbox
    from jaxgpt.sample import SamplingParams

    try:
        SamplingParams(args.temperature, args.top_k or None, args.top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise ConfigError("--num_samples must be >= 1 and --max_new_tokens >= 0")
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
    stream = args.num_samples == 1 and sys.stdout.isatty()
    if stream:
        sys.stdout.write(tok.decode(prompt))
    out = generate(
        params,
        model_cfg,
        prompt,
        tokenizer=tok,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.num_samples,
        stop=(args.stop or []) + (args.stop_token or []),
        kv_cache=args.kv_cache,
        on_text=(lambda piece: print(piece, end="", flush=True)) if stream else None,
    )
    for text in out.texts:
        print("" if stream else text)
        print("---------------")
    print(out.summary(), file=sys.stderr)


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


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
    p.add_argument("--stop", action="append", help="stop a sample at this text (repeatable)")
    p.add_argument("--stop_token", action="append", type=int, help="stop a sample at this token id")
    p.add_argument(
        "--kv_cache", type=_flag, default=True, help="False: the plain fixed-buffer sampler"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        if argv and argv[0] == "train":
            cmd_train(argv[1:])
        else:
            args = parser.parse_args(argv)
            {"prepare": cmd_prepare, "sample": cmd_sample}[args.command](args)
    except USER_ERRORS as e:
        print(f"jaxgpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
