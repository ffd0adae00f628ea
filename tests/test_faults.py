"""Faults: SIGKILL at random moments and mid-checkpoint, SIGTERM, non-finite losses."""

import dataclasses
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from cli_process import ROOT, TrainProcess, train_args
from conftest import tiny_run

from jaxgpt import checkpoint, cli, loop, train
from jaxgpt.watch import faults
from jaxgpt.watch.metrics import read_jsonl


def complete_steps(out_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in out_dir.iterdir() if p.name.isdigit())


def tmp_dirs(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.glob("*.orbax-checkpoint-tmp*"))


def curve(out_dir) -> list[tuple]:
    """Every logged training and evaluation value of a run, killed segments' extra work
    dropped: what `jaxgpt plot` draws."""
    fields = ("loss", "lr", "grad_norm", "train_loss", "val_loss")
    return [
        (r["kind"], r["step"]) + tuple(r.get(f) for f in fields)
        for r in read_jsonl(str(out_dir))
        if r["kind"] in ("train", "eval")
    ]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    """Five SIGKILLs, one of them while checkpoint files are being written (a test hook
    kills the process while the step's temporary folder exists), each followed by a
    restart as a restart script would do it (init_from=resume, or scratch before the
    first checkpoint): the finished run has exactly the losses, curve and weights of a
    run never interrupted."""
    kw = dict(max_iters=80, eval_interval=10, log_interval=1)
    reference = loop.setup(tiny_run(data_dir, str(tmp_path / "ref"), **kw))
    ref_losses = loop.train_loop(reference)

    out = tmp_path / "killed"
    rng = random.Random(8)
    in_save, resumes = 2, 0  # in_save: the kill that happens during a checkpoint write

    def restart_args() -> list[str]:
        init = "resume" if out.exists() and complete_steps(out) else "scratch"
        return train_args(tiny_run(data_dir, str(out), init_from=init, **kw))

    for kill in range(5):
        done = complete_steps(out) if out.exists() else []
        next_save = (done[-1] if done else 0) + 10
        if kill == in_save:
            proc = TrainProcess(restart_args(), env={faults.KILL_IN_SAVE_ENV: str(next_save)})
            assert proc.wait() == -signal.SIGKILL, proc.output()
            assert tmp_dirs(out) == [f"{next_save}.orbax-checkpoint-tmp"], list(out.iterdir())
            assert complete_steps(out) == done  # the partial one does not count
        else:  # a random moment a few steps after the next checkpoint is complete
            proc = TrainProcess(restart_args())
            while not (out / str(next_save)).is_dir():
                now = int(proc.wait_for("iter ").split()[1].rstrip(":"))
            proc.wait_for(f"iter {now + rng.randint(1, 4)}:")
            time.sleep(rng.uniform(0, 0.02))
            proc.proc.kill()
            assert proc.wait() == -signal.SIGKILL
        resumes += any(x.startswith(f"resuming from {out} at iter") for x in proc.lines)
    assert resumes == 4, resumes  # all but the first start

    resumed = loop.setup(tiny_run(data_dir, str(out), init_from="resume", **kw))
    assert loop.train_loop(resumed) == ref_losses  # exact float equality
    assert tmp_dirs(out) == []  # the resumed run's writer removed the partial checkpoints
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(reference.state)):
        np.testing.assert_array_equal(a, b)
    assert curve(out) == curve(tmp_path / "ref")


def test_sigterm_saves_at_the_current_step_and_exits_0(data_dir, tmp_path):
    out = tmp_path / "run"
    kw = dict(eval_interval=50_000, log_interval=1)
    proc = TrainProcess(train_args(tiny_run(data_dir, str(out), max_iters=100_000, **kw)))
    proc.wait_for("iter 30:")
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.output()
    seconds = time.monotonic() - t0
    stop_line = [x for x in proc.lines if x.startswith("SIGTERM: stopped at iter")]
    assert len(stop_line) == 1, proc.output()
    step = int(stop_line[0].split("iter ")[1].split(",")[0])
    assert step > 30 and complete_steps(out) == [step] and tmp_dirs(out) == []
    assert "SIGTERM received" in proc.stderr
    assert seconds < 15, seconds  # ~1 s on an idle machine

    resumed = loop.setup(tiny_run(data_dir, str(out), init_from="resume", max_iters=step + 5, **kw))
    assert resumed.iter_num == step and int(resumed.state.step) == step
    loop.train_loop(resumed)
    steps = [r["step"] for r in read_jsonl(str(out)) if r["kind"] == "train"]
    assert steps == list(range(step + 5))  # no gap, no repeat
    assert complete_steps(out) == [step, step + 5]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(data_dir, tmp_path):
    """A multi-process run (jax.distributed on localhost, one CPU device per process, as
    the processes of a TPU pod slice): SIGTERM reaches one process only, as a TPU VM's
    maintenance notice would; JAX's preemption service makes both save the same step."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # one layer, no dropout: a sharded step of its own to compile, ~3x faster without RNG
    cfg = tiny_run(data_dir, str(tmp_path), max_iters=100_000, eval_interval=50_000, n_layer=1)
    cfg = dataclasses.replace(cfg, dropout=0.0, log_interval=1, num_processes=2)
    cfg = dataclasses.replace(cfg, coordinator_address=f"127.0.0.1:{port}")
    procs = [TrainProcess(train_args(dataclasses.replace(cfg, process_id=i))) for i in range(2)]
    procs[0].wait_for("iter 20:")  # process 0 logs for both
    procs[1].proc.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=120) for p in procs] == [0, 0], procs[1].output()
    stop = [x for x in procs[0].lines if x.startswith("preemption notice: stopped at iter")]
    step = int(stop[0].split("iter ")[1].split(",")[0])
    assert step > 20 and complete_steps(tmp_path) == [step], procs[0].output()


def test_second_signal_exits_at_once():
    script = (
        "import os, signal\n"
        "from jaxgpt.watch.faults import StopSignals\n"
        "with StopSignals() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.requested() and stop.name == 'SIGINT'\n"
        "    print('first signal caught', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('still running')\n"
    )
    env = {"PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert res.stdout == "first signal caught\n", res
    assert res.returncode == 128 + signal.SIGTERM, res
    assert "second signal (SIGTERM): exiting now" in res.stderr


def test_nonfinite_step_leaves_the_state_unchanged(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.NAN_ITERS_ENV, "0")
    run = loop.setup(tiny_run(data_dir, str(tmp_path)))
    step_fn = train.make_train_step(run.model_cfg, run.cfg, run.tx, run.mesh)
    before = jax.tree.map(np.asarray, run.state)
    state, m = step_fn(jax.tree.map(jnp.copy, run.state), loop.train_batch(run, 0))
    assert bool(m["nonfinite"]) and np.isnan(m["loss"]) and np.isnan(m["grad_norm"])
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    state, m = step_fn(state, loop.train_batch(run, 1))  # a clean batch: a normal update
    assert not bool(m["nonfinite"]) and int(state.step) == 1


def test_nan_losses_are_skipped_and_reported(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(faults.NAN_ITERS_ENV, "7,8,13")
    run = loop.setup(tiny_run(data_dir, str(tmp_path), max_iters=20, log_interval=1))
    losses = loop.train_loop(run)
    out = capsys.readouterr().out
    assert "iter 7: non-finite loss nan or grad norm nan: update skipped (1 in a row" in out
    assert "iter 8: non-finite loss nan or grad norm nan: update skipped (2 in a row" in out
    assert "(1 in a row, 3 in total)" in out
    assert np.isfinite(losses["val"]) and "step 20: train loss" in out
    assert int(run.state.step) == 17  # 20 iterations, 3 updates skipped
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.state.params))
    skips = [r for r in read_jsonl(str(tmp_path)) if r["kind"] == "skip"]
    assert [(r["step"], r["streak"], r["skipped"]) for r in skips] == [
        (7, 1, 1),
        (8, 2, 2),
        (13, 1, 3),
    ]
    _, meta = checkpoint.restore_meta(str(tmp_path))
    assert meta["skipped"] == 3


def test_too_many_nonfinite_steps_stop_the_run(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(faults.NAN_ITERS_ENV, ",".join(str(i) for i in range(6, 20)))
    cfg = tiny_run(data_dir, str(tmp_path), eval_interval=5, max_nonfinite_steps=3)
    code = cli.main(["train", *train_args(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("jaxgpt: error: iter 8: 3 consecutive non-finite"), err
    assert f"{tmp_path} keeps checkpoint 5" in err[0]
    assert complete_steps(tmp_path) == [5]  # the last good checkpoint, nothing after it
    stop = [r for r in read_jsonl(str(tmp_path)) if r["kind"] == "stop"]
    assert [(r["step"], r["reason"]) for r in stop] == [(9, "nonfinite")]


def test_skips_counted_with_several_steps_per_call(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.NAN_ITERS_ENV, "3")
    run = loop.setup(tiny_run(data_dir, str(tmp_path), steps_per_call=5, max_iters=10))
    loop.train_loop(run)
    assert int(run.state.step) == 9 and run.skipped == 1
    assert [r["step"] for r in read_jsonl(str(tmp_path)) if r["kind"] == "skip"] == [3]
