"""Nothing lost, nothing silent: out_dir's lock, a failed save (disk full), one line and no
traceback after an error, and metrics.jsonl holding each step once after resumes.

One tiny run is trained once (module fixture); each case works on a copy of its out_dir.
"""

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import ROOT, TrainProcess, train_args
from conftest import snapshot, tiny_run

from jaxgpt import cli, loop
from jaxgpt.watch import faults, lock

TINY = dict(
    n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, eval_iters=2, dropout=0.0,
    max_iters=10, eval_interval=5, log_interval=1, tensorboard_log=False,
)  # fmt: skip


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgpt: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A finished run with checkpoints 5 and 10."""
    out = tmp_path_factory.mktemp("outdir") / "run"
    assert cli.main(["train", *train_args(tiny_run(data_dir, str(out), **TINY))]) == 0
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def args(data_dir, out, **kw) -> list[str]:
    return train_args(tiny_run(data_dir, str(out), **(TINY | kw)))


def test_a_second_writer_is_refused_and_touches_nothing(data_dir, run_copy, tmp_path, capsys):
    """A held lock (as a training run holds it, with a save in progress) refuses a resume
    and a fresh run in one line naming the holder, exit 2; the in-progress save and every
    file stay as they were. Readers (eval_only, sample) are not blocked and remove nothing."""
    in_progress = run_copy / "15.orbax-checkpoint-tmp"
    in_progress.mkdir()
    (in_progress / "part").write_bytes(b"being written")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    held = [lock.OutDirLock(str(d)).acquire() for d in (run_copy, fresh)]
    before = snapshot(run_copy)
    for out, init in ((run_copy, "resume"), (fresh, "scratch")):
        code = cli.main(["train", *args(data_dir, out, init_from=init, max_iters=20)])
        line = one_line(capsys.readouterr().err)
        assert code == 2 and f"out_dir {out} is in use by a jaxgpt run" in line, line
        assert f"pid {os.getpid()} on {socket.gethostname()} since 20" in line
    assert snapshot(run_copy) == before and sorted(p.name for p in fresh.iterdir()) == [
        lock.LOCK_FILE
    ]

    cfg = tiny_run(data_dir, str(run_copy), **TINY | dict(init_from="resume", eval_only=True))
    run = loop.setup(cfg)
    assert loop.train_loop(run)["val"] > 0 and run.iter_num == 10
    sample = ["sample", f"--out_dir={run_copy}", "--num_samples=1", "--max_new_tokens=3"]
    assert cli.main(sample) == 0
    capsys.readouterr()
    assert snapshot(run_copy) == before  # readers write and clean nothing
    for h in held:
        h.release()


def test_a_lock_left_by_a_killed_process_does_not_block(data_dir, run_copy, capsys):
    script = (
        "import sys, time\n"
        "from jaxgpt.watch.lock import OutDirLock\n"
        "held = OutDirLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {"PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(run_copy)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline() == "locked\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_copy / lock.LOCK_FILE).read_text())["pid"] == proc.pid  # stale
    code = cli.main(["train", *args(data_dir, run_copy, init_from="resume", max_iters=15)])
    out = capsys.readouterr().out
    assert code == 0 and out.count(f"saving checkpoint to {run_copy}") == 1, out
    assert (run_copy / lock.LOCK_FILE).read_text() == ""  # released


def test_disk_full_during_a_save_stops_at_once_in_one_line(data_dir, run_copy):
    """The write of checkpoint 15 fails with ENOSPC inside orbax's background commit: one
    line naming the step, out_dir, the space and the last good checkpoint, exit 74, the
    run stopped before the next evaluation, checkpoints 5 and 10 unchanged."""
    saved = {k: v for k, v in snapshot(run_copy).items() if k.split("/")[0] in ("5", "10")}
    cmd = args(data_dir, run_copy, init_from="resume", max_iters=30, keep_checkpoints=2)
    proc = TrainProcess(cmd, env={faults.SAVE_OSERROR_ENV: "15"})
    assert proc.wait() == faults.EX_IOERR, proc.output()
    line = one_line(proc.stderr)
    assert f"saving checkpoint 15 to {run_copy} failed: [Errno 28] No space left on device" in line
    assert "MB free, the checkpoint needs ~" in line, line
    assert "keeps checkpoint 10 (the last good one)" in line, line
    assert not any(x.startswith("step 20:") for x in proc.lines), proc.output()
    now = snapshot(run_copy)
    assert {k: v for k, v in now.items() if k.split("/")[0] in ("5", "10")} == saved
    assert not (run_copy / "15").exists()
    stops = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in stops if r["kind"] == "stop"] == ["save_failed"]


BAD_INPUTS = {
    "n_embd not divisible": ["--n_embd=130", "--n_head=4"],
    "float8": ["--dtype=float8"],
    "vocab_size too small": ["--vocab_size=5"],
}


def test_bad_input_is_one_line_no_traceback_no_out_dir(data_dir, tmp_path):
    """Each through the command line: a one-line error, exit 2, nothing after it (orbax's
    threads shut down), and no out_dir created. Also a convert of a non-checkpoint."""
    for name, extra in BAD_INPUTS.items():
        out = tmp_path / name.replace(" ", "_")
        proc = TrainProcess(args(data_dir, out) + extra)
        assert proc.wait() == 2, (name, proc.output())
        one_line(proc.stderr)
        assert not out.exists(), name
    fake = tmp_path / "not_a_checkpoint"
    (fake / "5").mkdir(parents=True)
    (fake / "5" / "x").write_text("hi")
    cmd = [sys.executable, "-m", "jaxgpt.cli", "convert", "--from", "jaxgpt", str(fake)]
    cmd += ["--to", "hf", str(tmp_path / "hf")]
    res = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": ROOT}, cwd=ROOT)
    assert res.returncode == 2 and "no usable checkpoint" in one_line(res.stderr), res


def test_metrics_hold_each_step_once_after_kills_and_resumes(data_dir, run_copy):
    """Killed while writing checkpoint 15, resumed and killed while writing 20, resumed to
    25: metrics.jsonl itself (not only read_jsonl) holds each train and eval step once."""
    for kill_at in (15, 20):
        cmd = args(data_dir, run_copy, init_from="resume", max_iters=25)
        proc = TrainProcess(cmd, env={faults.KILL_IN_SAVE_ENV: str(kill_at)})
        assert proc.wait() == -signal.SIGKILL, proc.output()
    cfg = tiny_run(data_dir, str(run_copy), **TINY | dict(init_from="resume", max_iters=25))
    loop.train_loop(loop.setup(cfg))
    records = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    seen = collections.Counter((r["kind"], r["step"]) for r in records if r["kind"] != "start")
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1]
    assert sorted(s for k, s in seen if k == "train") == list(range(25))
    assert sorted(s for k, s in seen if k == "eval") == [0, 5, 10, 15, 20, 25]
    assert [r["step"] for r in records if r["kind"] == "start"] == [0, 10, 15]
