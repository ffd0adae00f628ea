"""`jaxgpt sample`: nanoGPT's sample.py on a checkpoint or pretrained weights."""

import argparse
import sys
from pathlib import Path

from jaxgpt.cli.keyhelp import HELP_FORMAT
from jaxgpt.config import ConfigError
from jaxgpt.data import DataError


def flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a checkpoint", formatter_class=HELP_FORMAT
    )
    p.add_argument("--out_dir", default="out", help="checkpoint folder")
    p.add_argument("--init_from", default="resume", help="resume (out_dir) | gpt2* | HF directory")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path")
    p.add_argument("--num_samples", type=int, default=10, help="samples to draw")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200, help="0 = no top-k filtering")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed")
    p.add_argument("--stop", action="append", help="stop a sample at this text (repeatable)")
    p.add_argument("--stop_token", action="append", type=int, help="stop a sample at this token id")
    p.add_argument(
        "--kv_cache", type=flag, default=True, help="False: the plain fixed-buffer sampler"
    )


def read_start(start: str) -> str:
    """nanoGPT's --start: the text itself, or FILE:path to read it from a file."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise DataError(f"--start {start}: no such file")
        return path.read_text(encoding="utf-8")
    return start


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxgpt import checkpoint
    from jaxgpt.generation import generate
    from jaxgpt.model import abstract_params, unbox
    from jaxgpt.prep import tokenizer
    from jaxgpt.sample import SamplingParams

    try:
        SamplingParams(args.temperature, args.top_k or None, args.top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise ConfigError("--num_samples must be >= 1 and --max_new_tokens >= 0")
    if args.init_from == "resume":
        step = checkpoint.usable_step(args.out_dir)  # meta and weights of one verified step
        _, meta = checkpoint.restore_meta(args.out_dir, step)
        model_cfg, tok_meta = checkpoint.model_config(meta), meta["tokenizer"]
    else:  # GPT-2 weights: a hub name or a Hugging Face directory
        from jaxgpt.interop import hf

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
        _, params, _ = checkpoint.restore_params(args.out_dir, abstract, step)
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
    return 0
