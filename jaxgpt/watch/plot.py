"""`jaxgpt plot`: loss and learning-rate curves of one or several runs, from metrics.jsonl.

One PNG with four panels: loss vs step and loss vs training time (faint: the logged
training batches; solid: train loss on the fixed evaluation batches; dashed: val loss),
learning rate vs step, and tokens/s vs step. Runs are overlaid in different colours and
labelled by their folder, plus the config keys in which they differ.
"""

from pathlib import Path

from jaxgpt.data import DataError
from jaxgpt.watch.metrics import METRICS_FILE, read_jsonl

IGNORED_KEYS = {"out_dir", "init_from", "wandb_run_name", "eval_only", "wandb_log"}


def load_run(out_dir: str) -> dict:
    """{kind: [records]} of a run's metrics.jsonl, killed segments' extra work removed."""
    if not (Path(out_dir) / METRICS_FILE).is_file():
        raise DataError(f"no {METRICS_FILE} in {out_dir}: not a jaxgpt run folder")
    runs: dict[str, list] = {"start": [], "train": [], "eval": [], "skip": [], "stop": []}
    for rec in read_jsonl(out_dir):
        runs.setdefault(rec["kind"], []).append(rec)
    if not runs["train"] and not runs["eval"]:
        raise DataError(f"{out_dir}/{METRICS_FILE} has no training records yet")
    return runs


def labels(out_dirs: list[str], runs: list[dict]) -> list[str]:
    """Folder names, plus `key=value` for up to three config keys that differ between runs."""
    configs = [r["start"][0].get("config", {}) if r["start"] else {} for r in runs]
    keys = sorted({k for c in configs for k in c} - IGNORED_KEYS)
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1][:3]
    out = []
    for d, c in zip(out_dirs, configs):
        extra = ", ".join(f"{k}={c.get(k)}" for k in differing)
        out.append(f"{Path(d).name}" + (f" ({extra})" if extra else ""))
    return out


def _series(records: list[dict], x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in records if r.get(y) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(out_dirs: list[str], output: str) -> None:
    """Write the PNG for the runs in out_dirs (overlaid) to `output`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in out_dirs]
    names = labels(out_dirs, runs)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (ax_step, ax_time), (ax_lr, ax_tok) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, name) in enumerate(zip(runs, names)):
        c = colors[i % len(colors)]
        for ax, x in ((ax_step, "step"), (ax_time, "time")):
            ax.plot(*_series(run["train"], x, "loss"), color=c, alpha=0.25, lw=0.8)
            ax.plot(*_series(run["eval"], x, "train_loss"), color=c, lw=1.8, label=name)
            ax.plot(*_series(run["eval"], x, "val_loss"), color=c, lw=1.8, ls="--")
        ax_lr.plot(*_series(run["train"], "step", "lr"), color=c, label=name)
        ax_tok.plot(*_series(run["train"], "step", "tok_per_s"), color=c, lw=0.8, label=name)
        for skip in run["skip"]:  # updates skipped for a non-finite loss
            ax_step.axvline(skip["step"], color=c, alpha=0.4, ls=":")
    ax_step.set(xlabel="step", ylabel="loss", title="loss vs step (solid train, dashed val)")
    ax_time.set(xlabel="training time (s)", ylabel="loss", title="loss vs wall time")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax_tok.set(xlabel="step", ylabel="tokens/s", title="throughput")
    ax_step.legend(fontsize=8)
    ax_lr.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=90)
    plt.close(fig)
