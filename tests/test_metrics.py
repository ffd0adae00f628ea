"""What a run reports: the live bar, metrics.jsonl, TensorBoard, W&B offline, `jaxgpt plot`."""

import contextlib
import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run

from jaxgpt import cli, loop, train
from jaxgpt.watch import plot
from jaxgpt.watch.metrics import read_jsonl


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Two tiny runs that differ in learning rate, the first on a (fake) terminal."""
    root = tmp_path_factory.mktemp("metrics")
    out, err = Terminal(), Terminal()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        a_losses = loop.run_training(tiny_run(data_dir, str(root / "a")))
    loop.run_training(tiny_run(data_dir, str(root / "b"), learning_rate=1e-3))
    return {
        "a": root / "a",
        "b": root / "b",
        "losses": a_losses,
        "tty": (out.getvalue(), err.getvalue()),
    }


def test_progress_bar_on_a_terminal(runs):
    out, err = runs["tty"]
    assert "step 20: train loss" in out and "iter 15: loss" in out  # the log lines, above the bar
    assert "20/20" in err and "tok/s" in err and "lr " in err  # the bar and its live postfix


def test_metrics_jsonl_holds_every_log_point_and_eval(runs, data_dir):
    records = read_jsonl(str(runs["a"]))
    assert records[0]["kind"] == "start" and records[0]["config"]["learning_rate"] == 3e-3
    train_recs = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_recs] == [0, 5, 10, 15]
    assert [r["step"] for r in evals] == [0, 10, 20]
    last = evals[-1]
    assert (last["train_loss"], last["val_loss"]) == (
        runs["losses"]["train"],
        runs["losses"]["val"],
    )
    cfg = tiny_run(data_dir, "unused")
    for r in train_recs:
        assert r["lr"] == pytest.approx(float(train.get_lr(r["step"], cfg)), rel=1e-6)
        assert r["tok_per_s"] > 0 and r["ms_per_iter"] > 0 and r["grad_norm"] > 0
    times = [r["time"] for r in records]
    assert times == sorted(times)


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: [(step, value)]} from the TFRecord event files (no tensorboard needed)."""
    from tensorboardX.proto import event_pb2

    scalars: dict = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_tensorboard_event_files(runs):
    scalars = tensorboard_scalars(runs["a"] / "tensorboard")
    assert [s for s, _ in scalars["loss/val"]] == [0, 10, 20]
    assert scalars["loss/val"][-1][1] == pytest.approx(runs["losses"]["val"], rel=1e-6)
    assert [s for s, _ in scalars["loss/train_batch"]] == [0, 5, 10, 15]
    assert {"lr", "grad_norm", "tokens_per_sec", "loss/train"} <= set(scalars)


def test_tensorboard_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports an installed torch (seconds of start-up); the writer jaxgpt
    uses must not, and must still write events. A fresh process: tests import torch."""
    pytest.importorskip("torch")
    code = (
        "import sys; from jaxgpt.watch.metrics import tensorboard_writer\n"
        "w = tensorboard_writer()(sys.argv[1]); w.add_scalar('loss', 1.5, 0); w.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch  # still importable afterwards\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert tensorboard_scalars(tmp_path) == {"loss": [(0, 1.5)]}


def test_plot_two_runs_overlaid(runs, tmp_path, capsys):
    png = tmp_path / "plot.png"
    assert cli.main(["plot", str(runs["a"]), str(runs["b"]), "--output", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    dirs = [str(runs["a"]), str(runs["b"])]
    names = plot.labels(dirs, [plot.load_run(d) for d in dirs])
    assert names == ["a (learning_rate=0.003)", "b (learning_rate=0.001)"]


def test_plot_of_a_folder_without_metrics(tmp_path, capsys):
    code = cli.main(["plot", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"jaxgpt: error: no metrics.jsonl in {tmp_path}: not a jaxgpt run folder"
    ]


def test_wandb_offline(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_run(data_dir, str(tmp_path), max_iters=5, eval_interval=5, wandb_log=True)
    loop.run_training(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"val/loss" in runs[0].read_bytes()  # nanoGPT's keys
