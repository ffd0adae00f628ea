"""`jaxgpt lecture`: train the lecture's stages, bigram to GPT, and print their table."""

import argparse

from jaxgpt.cli.keyhelp import HELP_FORMAT


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lecture",
        help="train the lecture's stages, bigram to GPT; print a table",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("--stages", default="1-6", help="e.g. 1-6, 2,5, 7 or all")
    p.add_argument("--input", help="tiny Shakespeare text (else $JAXGPT_SHAKESPEARE, data_dir)")
    p.add_argument(
        "--data_dir", default="data", help="where `jaxgpt prepare` wrote shakespeare_char"
    )
    for key in ("max_iters", "eval_interval", "eval_iters"):
        p.add_argument(f"--{key}", type=int, help="override every stage's lecture setting")


def run(args: argparse.Namespace) -> int:
    from jaxgpt.learn import lecture

    overrides = {k: getattr(args, k) for k in ("max_iters", "eval_interval", "eval_iters")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    stages = lecture.parse_stages(args.stages)
    results, text = lecture.run_lecture(stages, args.input, args.data_dir, overrides)
    print(lecture.format_table(results, overrides, text))
    return 0
