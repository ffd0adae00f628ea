"""`jaxgpt bench`: time the train step (perf/bench.py), or compare it with PyTorch's."""

import json
from pathlib import Path

from jaxgpt.cli import keyhelp
from jaxgpt.cli.train import split_config_file
from jaxgpt.config import ConfigError

BENCH_OPTIONS = {  # bench's own options: (default, description); other keys are TrainConfig's
    "iters": (20, "timed train steps (>= 1)"),
    "warmup": (3, "untimed steps first, compilation included (>= 0)"),
    "real_data": (False, "batches from the dataset (data_dir/dataset), not random tokens"),
    "vocab_size": (50304, "vocabulary of the random-token batches (>= 1)"),
    "profile": ("", "write a jax.profiler trace of the timed steps to this folder"),
    "json": (False, "print the result as one JSON object"),
    "impl": ("jax", "what to time: jax | torch | torch-compile"),
    "compare": ("", "torch: alternate jax and PyTorch runs, print a markdown table"),
    "rounds": (3, "--compare: alternating rounds (>= 1)"),
    "plot": ("", "--compare: PNG of the loss curves"),
    "table": ("", "--compare: also write the table to this markdown file"),
}
BENCH_RANGES = {"iters": 1, "warmup": 0, "vocab_size": 1, "rounds": 1}  # the least allowed
USAGE = """usage: jaxgpt bench [CONFIG.py] [--key=value ...]

Times the train step of the run CONFIG.py and the overrides describe (perf/bench.py), or
compares it with PyTorch's. bench's own options (a bare --flag means True):"""


def help_text() -> str:
    rows = [
        f"  --{key:<13} {type(d).__name__:<5}  {d!r:<7}  {text}"
        for key, (d, text) in BENCH_OPTIONS.items()
    ]
    return "\n".join([USAGE, *rows, "", "and every training key:", keyhelp.keys_help()])


def add_parser(sub) -> None:
    sub.add_parser(
        "bench",
        help="time the train step: jaxgpt bench [CONFIG.py] [--key=value ...] [--iters=N] "
        "[--real_data] [--profile=DIR] [--json] [--impl=jax|torch|torch-compile] "
        "[--compare=torch --rounds=N --table=MD --plot=PNG]",
    )


def run(argv: list[str]) -> int:
    """jaxgpt bench [CONFIG.py] [--key=value ...] with bench options among the keys."""
    from jaxgpt.config import load_train_config, parse_value

    if keyhelp.wants_help(argv):
        print(help_text())
        return 0
    opts, rest = {k: d for k, (d, _) in BENCH_OPTIONS.items()}, []
    for arg in argv:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in BENCH_OPTIONS:
            text = arg.split("=", 1)[1] if "=" in arg else "True"
            opts[key] = parse_value(type(opts[key]), key, text)
        else:
            rest.append(arg)
    for key, least in BENCH_RANGES.items():
        if opts[key] < least:
            raise ConfigError(f"--{key}={opts[key]} must be >= {least}")
    if opts["impl"] not in ("jax", "torch", "torch-compile"):
        raise ConfigError(f"--impl={opts['impl']}: use jax, torch or torch-compile")
    cfg = load_train_config(*split_config_file(rest))
    if opts["compare"]:
        if opts["compare"] != "torch":
            raise ConfigError(f"--compare={opts['compare']}: only torch is supported")
        from jaxgpt.perf import compare

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
        return 0
    kw = dict(iters=opts["iters"], warmup=opts["warmup"], synthetic=not opts["real_data"])
    if not opts["real_data"]:
        kw["vocab_size"] = opts["vocab_size"]
    if opts["impl"] == "jax":
        from jaxgpt.perf.bench import bench_train

        result = bench_train(cfg, profile_dir=opts["profile"] or None, **kw)
    else:
        from jaxgpt.perf.compare import torch_bench_train

        result = torch_bench_train(cfg, compile=opts["impl"] == "torch-compile", **kw)
    if opts["json"]:
        print(json.dumps(result))
    else:
        from jaxgpt.perf.bench import format_result

        print(format_result(result))
    return 0
