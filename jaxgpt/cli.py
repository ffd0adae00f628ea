"""The `jaxgpt` command: parses arguments and wires the package together.

    jaxgpt prepare shakespeare_char|shakespeare|openwebtext [--input FILE] [--data_dir DIR]
    jaxgpt train [CONFIG.py] [--key=value ...]
    jaxgpt sample --out_dir DIR [--start TEXT | --start FILE:path] [--num_samples N]
        [--stop TEXT] [--stop_token ID] [--kv_cache=False] ...
    jaxgpt convert --from {hf,nanogpt,jaxgpt} SRC --to {hf,nanogpt,jaxgpt} DST [--meta PATH]
    jaxgpt lecture [--stages 1-6] [--input FILE] [--max_iters N] ...
    jaxgpt plot OUT_DIR [OUT_DIR ...] [--output PNG]

User mistakes (a bad key, missing data, an unknown character) end with one line on
stderr and exit status 2; a run stopped by non-finite losses exits 1, one stopped by
Ctrl-C exits 130 after saving its checkpoint.
"""

import argparse
import sys
from pathlib import Path

from jaxgpt import cpu
from jaxgpt.config import ConfigError
from jaxgpt.data import DataError
from jaxgpt.faults import NonFiniteError
from jaxgpt.tokenizer import TokenizerError


def user_errors() -> tuple:
    """Exceptions that mean bad input: one line, exit 2. Two live in modules that import
    JAX, hence imported only when an exception is being handled."""
    from jaxgpt.checkpoint import CheckpointError
    from jaxgpt.convert import ConvertError

    return (ConfigError, DataError, TokenizerError, CheckpointError, ConvertError)


def cmd_prepare(args: argparse.Namespace) -> None:
    from jaxgpt import prepare

    if args.dataset == "shakespeare_char":
        text = prepare.shakespeare_text(args.input)
        summary = prepare.prepare_char(text, args.data_dir, args.name or "shakespeare_char")
    elif args.dataset == "char":
        if not args.input or not args.name:
            raise DataError("prepare char needs --input FILE and --name NAME")
        summary = prepare.prepare_char(prepare.read_text(args.input), args.data_dir, args.name)
    elif args.dataset == "shakespeare":
        from jaxgpt import prepare_bpe

        text = prepare.shakespeare_text(args.input)
        summary = prepare_bpe.prepare_shakespeare(text, args.data_dir, args.name or "shakespeare")
    elif args.dataset == "openwebtext":
        from jaxgpt import prepare_bpe

        summary = prepare_bpe.prepare_corpus(
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


def cmd_train(argv: list[str]) -> int:
    from jaxgpt.config import load_train_config

    config_file = argv[0] if argv and not argv[0].startswith("--") else None
    cfg = load_train_config(config_file, argv[1:] if config_file else argv)
    from jaxgpt import loop

    run = loop.setup(cfg)
    loop.train_loop(run)
    return loop.exit_code(run)


BENCH_OPTIONS = {  # bench's own options and their defaults; other keys are TrainConfig's
    "iters": 20,
    "warmup": 3,
    "real_data": False,
    "vocab_size": 50304,
    "profile": "",
    "json": False,
    "impl": "jax",
    "compare": "",
    "rounds": 3,
    "plot": "",
    "table": "",
}


def cmd_bench(argv: list[str]) -> None:
    """jaxgpt bench [CONFIG.py] [--key=value ...] with bench options among the keys."""
    import json

    from jaxgpt.config import load_train_config, parse_value

    opts, rest = dict(BENCH_OPTIONS), []
    for arg in argv:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in BENCH_OPTIONS:
            text = arg.split("=", 1)[1] if "=" in arg else "True"
            opts[key] = parse_value(type(BENCH_OPTIONS[key]), key, text)
        else:
            rest.append(arg)
    if opts["impl"] not in ("jax", "torch", "torch-compile"):
        raise ConfigError(f"--impl={opts['impl']}: use jax, torch or torch-compile")
    config_file = rest[0] if rest and not rest[0].startswith("--") else None
    cfg = load_train_config(config_file, rest[1:] if config_file else rest)
    if opts["compare"]:
        if opts["compare"] != "torch":
            raise ConfigError(f"--compare={opts['compare']}: only torch is supported")
        from jaxgpt import compare

        passthrough = [
            a
            for a in argv
            if not a.startswith(("--compare", "--rounds", "--plot", "--table", "--impl", "--json"))
        ]
        summary = compare.compare(passthrough, compare.IMPLS, opts["rounds"])
        table = compare.markdown_table(summary)
        print(table)
        if opts["table"]:
            Path(opts["table"]).write_text(table + "\n")
        if opts["plot"]:
            compare.plot_losses(summary, opts["plot"])
        return
    kw = dict(iters=opts["iters"], warmup=opts["warmup"], synthetic=not opts["real_data"])
    if not opts["real_data"]:
        kw["vocab_size"] = opts["vocab_size"]
    if opts["impl"] == "jax":
        from jaxgpt.bench import bench_train

        result = bench_train(cfg, profile_dir=opts["profile"] or None, **kw)
    else:
        from jaxgpt.compare import torch_bench_train

        result = torch_bench_train(cfg, compile=opts["impl"] == "torch-compile", **kw)
    if opts["json"]:
        print(json.dumps(result))
    else:
        from jaxgpt.bench import format_result

        print(format_result(result))


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
    if args.init_from == "resume":
        _, meta = checkpoint.restore_meta(args.out_dir)
        model_cfg, tok_meta = checkpoint.model_config(meta), meta["tokenizer"]
    else:  # GPT-2 weights: a hub name or a Hugging Face directory
        from jaxgpt import hf

        pretrained = hf.load(args.init_from)
        model_cfg, tok_meta, params = pretrained.config, pretrained.tokenizer, pretrained.params
    tok = tokenizer.from_meta(tok_meta)
    prompt = tok.encode(read_start(args.start))
    if not prompt:
        raise DataError("--start is empty: give at least one character")
    if args.init_from == "resume":
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


def cmd_convert(args: argparse.Namespace) -> None:
    from jaxgpt import bridge

    bundle, written = bridge.convert(
        args.src_format, args.src, args.dst_format, args.dst, args.meta
    )
    for note in bundle.notes:
        print(f"note: {note}")
    c = bundle.config
    print(
        f"wrote {written} ({args.dst_format}): {c.n_layer} layers, {c.n_head} heads, "
        f"{c.n_embd} embd, block {c.block_size}, vocab {c.vocab_size}, "
        f"tokenizer {bundle.tokenizer['kind']}, iter {bundle.iter_num}, "
        f"optimizer state {'yes' if bundle.moments is not None else 'no'}"
    )


def cmd_lecture(args: argparse.Namespace) -> None:
    from jaxgpt import lecture

    overrides = {k: getattr(args, k) for k in ("max_iters", "eval_interval", "eval_iters")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    stages = lecture.parse_stages(args.stages)
    results = lecture.run_lecture(stages, args.input, args.data_dir, overrides)
    print(lecture.format_table(results))


def cmd_plot(args: argparse.Namespace) -> None:
    from jaxgpt import plot

    output = args.output or str(Path(args.out_dirs[0]) / "plot.png")
    plot.plot_runs(args.out_dirs, output)
    print(f"wrote {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgpt", description="GPT in JAX, nanoGPT's way.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize a dataset into train.bin/val.bin/meta.json")
    p.add_argument("dataset", help="shakespeare_char | char | shakespeare | openwebtext")
    p.add_argument(
        "--input",
        help="local text file (openwebtext: a file, folder or glob of .txt/.jsonl documents)",
    )
    p.add_argument("--data_dir", default="data", help="where datasets go (default: data)")
    p.add_argument("--name", help="dataset name under data_dir (required for `char`)")
    p.add_argument("--hf_dataset", help="openwebtext: a HF dataset name (default openwebtext)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenizer processes")
    p.add_argument("--val_fraction", type=float, default=0.0005, help="openwebtext val split")

    sub.add_parser("train", help="train a model: jaxgpt train [CONFIG.py] [--key=value ...]")

    sub.add_parser(
        "bench",
        help="time the train step: jaxgpt bench [CONFIG.py] [--key=value ...] [--iters=N] "
        "[--real_data] [--profile=DIR] [--json] [--impl=jax|torch|torch-compile] "
        "[--compare=torch --rounds=N --table=MD --plot=PNG]",
    )

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--out_dir", default="out", help="checkpoint folder (default: out)")
    p.add_argument("--init_from", default="resume", help="resume (out_dir) | gpt2* | HF directory")
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

    p = sub.add_parser("convert", help="convert a model between jaxgpt, HF and nanoGPT")
    p.add_argument("--from", dest="src_format", required=True, choices=("hf", "nanogpt", "jaxgpt"))
    p.add_argument("src", help="HF directory or gpt2*, nanoGPT ckpt.pt (or its folder), out_dir")
    p.add_argument("--to", dest="dst_format", required=True, choices=("hf", "nanogpt", "jaxgpt"))
    p.add_argument("dst", help="destination (a new folder, or ckpt.pt for nanogpt)")
    p.add_argument("--meta", help="nanoGPT's meta.pkl: the character vocabulary")

    p = sub.add_parser("lecture", help="train the lecture's stages, bigram to GPT; print a table")
    p.add_argument("--stages", default="1-6", help="e.g. 1-6 (default), 2,5, 7 or all")
    p.add_argument("--input", help="tiny Shakespeare text (else $JAXGPT_SHAKESPEARE, data_dir)")
    p.add_argument(
        "--data_dir", default="data", help="where `jaxgpt prepare` wrote shakespeare_char"
    )
    for key in ("max_iters", "eval_interval", "eval_iters"):
        p.add_argument(f"--{key}", type=int, help="override every stage's lecture setting")

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
        if argv and argv[0] == "bench":
            cmd_bench(argv[1:])
            return 0
        args = parser.parse_args(argv)
        commands = {
            "prepare": cmd_prepare,
            "sample": cmd_sample,
            "convert": cmd_convert,
            "lecture": cmd_lecture,
            "plot": cmd_plot,
        }
        commands[args.command](args)
    except user_errors() as e:
        print(f"jaxgpt: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:  # the run diverged: not the user's input, exit 1
        print(f"jaxgpt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def entry() -> None:
    """The `jaxgpt` command and `python -m jaxgpt.cli`: on a CPU, re-execute with tcmalloc
    first (cpu.py); this module imports nothing heavy before that."""
    cpu.use_tcmalloc()
    sys.exit(main())


if __name__ == "__main__":
    entry()
