"""The speedrun's ablation: each technique switched off in turn, steps and wall time to 1.90.

    python scripts/speedrun_ablation.py [--data_dir DIR] [--ladder 300,400,...] \
        [--only NAME=STEPS ...] [--target 1.90]

For every row (the recipe, then one technique off at a time), runs the speedrun's two
commands as a user would, in fresh processes:

    jaxgpt train experiments/speedrun_char_cpu.py OFF --max_iters=N --lr_decay_iters=N ...
    jaxgpt train ... --init_from=resume --eval_only=True --eval_iters=200 --batch_size=12

over a ladder of step counts (the schedule scaled to each: warmup fixed, decay over the
last cooldown_frac) until the 200-batch val loss is <= target. Wall is the first command's
time, process start to exit. `--only muon=700` re-times chosen rows at a known step count
(one rung) in a quiet sitting. Prints one markdown row per technique.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "experiments" / "speedrun_char_cpu.py")

# one technique off at a time: its override, and what it falls back to
ABLATIONS = {
    "recipe": ([], "everything on"),
    "muon": (["--optimizer=adamw"], "AdamW (3e-3) on every weight"),
    "rope": (["--pos_encoding=learned"], "learned positions"),
    "rmsnorm": (["--norm=layernorm"], "LayerNorm"),
    "relu2": (["--mlp=gelu"], "GELU"),
    "qk_norm": (["--qk_norm=False"], "no QK-norm"),
    "wsd": (["--lr_schedule=cosine"], "cosine to min_lr 0"),
}
LADDER = (300, 400, 500, 700, 1000, 1500, 2000)
VAL = re.compile(r"val loss (\d+\.\d+)")


def jaxgpt(args: list[str], cwd: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "jaxgpt.cli", "train", RECIPE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"jaxgpt train {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return wall, out.stdout


def rung(off: list[str], steps: int, data_dir: str, work: str) -> tuple[float, float]:
    """(wall seconds of training, 200-batch val loss) of `steps` steps with `off`."""
    out_dir = str(Path(work) / f"out-{steps}-{'-'.join(a.strip('-') for a in off) or 'recipe'}")
    common = [f"--data_dir={data_dir}", f"--out_dir={out_dir}", *off]
    schedule = [f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps}"]
    wall, _ = jaxgpt(common + schedule, work)
    evals = ["--init_from=resume", "--eval_only=True", "--eval_iters=200", "--batch_size=12"]
    _, text = jaxgpt(common + evals, work)
    return wall, float(VAL.findall(text)[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data")
    p.add_argument("--ladder", default=",".join(map(str, LADDER)))
    p.add_argument("--only", nargs="*", default=None, help="NAME=STEPS: time one rung")
    p.add_argument("--target", type=float, default=1.90)
    args = p.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    plan = {name: [int(s) for s in args.ladder.split(",")] for name in ABLATIONS}
    if args.only is not None:
        plan = {n: [int(s)] for n, s in (item.split("=") for item in args.only)}
    print("| switched off | instead | steps | wall (s) | val (200 batches) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name, ladder in plan.items():
            off, instead = ABLATIONS[name]
            for steps in ladder:
                wall, val = rung(off, steps, data_dir, work)
                print(f"<!-- {name} {steps}: {wall:.1f} s, val {val:.4f} -->", flush=True)
                if val <= args.target or steps == ladder[-1]:
                    mark = "" if val <= args.target else f" (not <= {args.target})"
                    row = f"| {name} | {instead} | {steps}{mark} | {wall:.1f} | {val:.4f} |"
                    print(row if name != "recipe" else row.replace("| recipe |", "| - |"))
                    break


if __name__ == "__main__":
    main()
