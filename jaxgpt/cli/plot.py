"""`jaxgpt plot`: loss and learning-rate curves of runs from their metrics.jsonl."""

import argparse
from pathlib import Path

from jaxgpt.cli.keyhelp import HELP_FORMAT


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="plot loss and learning rate of one or several runs",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="run folders (metrics.jsonl)")
    p.add_argument("--output", help="PNG to write (default: OUT_DIR/plot.png of the first)")


def run(args: argparse.Namespace) -> int:
    from jaxgpt.watch import plot

    output = args.output or str(Path(args.out_dirs[0]) / "plot.png")
    plot.plot_runs(args.out_dirs, output)
    print(f"wrote {output}")
    return 0
