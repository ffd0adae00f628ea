"""Checkpoint integrity: a damaged, truncated or incomplete checkpoint is never used.

One tiny run with checkpoints 10 and 20 is trained once; each case damages a copy of it.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from cli_process import ROOT, train_args
from conftest import snapshot, tiny_run

from jaxgpt import checkpoint, loop

SMALL = dict(n_layer=1, n_head=2, n_embd=16, batch_size=2, eval_iters=2, keep_checkpoints=2)


def run_cfg(data_dir, out_dir, **kw):
    return tiny_run(data_dir, str(out_dir), **SMALL, **kw)


def data_file(step_dir: Path) -> Path:
    """The largest array data file of a step: the parameters and the Adam moments."""
    return max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)


def truncate(step_dir: Path, every: bool = False) -> None:
    """Cut the largest data file (every data file) of a step to half its size."""
    for f in (step_dir / "state").rglob("d/*") if every else [data_file(step_dir)]:
        os.truncate(f, f.stat().st_size // 2)


def overwrite(step_dir: Path) -> None:
    f = data_file(step_dir)
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        fh.write(b"\xff" * 64)


def cli(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxgpt.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        cwd=ROOT,
        timeout=timeout,
    )


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def resume(data_dir, out_dir) -> tuple[dict, str]:
    """Resume in this process: (the losses, the printed `step 20:` line)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        losses = loop.train_loop(loop.setup(run_cfg(data_dir, out_dir, init_from="resume")))
    return losses, [x for x in buf.getvalue().splitlines() if x.startswith("step 20:")][-1]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """An out_dir with checkpoints 10 and 20, and what resuming from checkpoint 10 alone
    gives (what a fallback to 10 must reproduce)."""
    root = tmp_path_factory.mktemp("integrity")
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        loop.train_loop(loop.setup(run_cfg(data_dir, out)))
    assert checkpoint.steps(str(out)) == [10, 20]
    older = root / "older"
    shutil.copytree(out, older)
    shutil.rmtree(older / "20")
    losses, line = resume(data_dir, older)
    return {"root": root, "out": out, "losses": losses, "line": line, "data_dir": data_dir}


def copy(trained, name: str) -> Path:
    dst = trained["root"] / name
    shutil.copytree(trained["out"], dst)
    return dst


def test_manifest_is_written_with_the_step(tmp_path):
    """(f) The manifest lists every file of the step with its size and sha256 once the
    save is finished, and names the first file that no longer matches."""
    mngr = checkpoint.manager(str(tmp_path))
    state = {"w": jnp.arange(1000, dtype=jnp.float32), "b": jnp.zeros(3)}
    assert checkpoint.save(mngr, 7, state, {"iter_num": 7})
    mngr.wait_until_finished()
    mngr.close()
    step_dir = tmp_path / "7"
    files = json.loads((step_dir / checkpoint.MANIFEST).read_text())["files"]
    on_disk = {k: v for k, v in snapshot(step_dir).items() if v != "/"}  # the files
    assert {"meta/metadata", "state/_METADATA"} <= set(files)
    for name, entry in files.items():
        assert entry["sha256"] == on_disk[name]
        assert entry["size"] == (step_dir / name).stat().st_size
    assert set(on_disk) - set(files) == {checkpoint.MANIFEST} | checkpoint.UNSEALED
    assert checkpoint.damage(step_dir) is None
    truncate(step_dir)
    assert "truncated" in checkpoint.damage(step_dir)
    restored = checkpoint.verified_step(str(tmp_path))
    assert restored is None


def test_truncated_latest_resumes_from_the_previous_step(trained):
    """(a) `jaxgpt train --init_from=resume` skips the truncated checkpoint 20 in one line,
    resumes from 10 exactly as a resume from 10 does, keeps the damaged files (renamed
    20.damaged, since the run saves a new 20) and exits 0."""
    out = copy(trained, "truncated")
    truncate(out / "20")
    before = snapshot(out / "20")
    proc = cli("train", *train_args(run_cfg(trained["data_dir"], out, init_from="resume")))
    assert proc.returncode == 0, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith(f"jaxgpt: checkpoint 20 in {out} is damaged (state/"), line
    assert "truncated" in line and line.endswith(": using checkpoint 10 (kept as 20.damaged)")
    assert [x for x in proc.stdout.splitlines() if x.startswith("step 20:")][-1] == trained["line"]
    assert snapshot(out / "20.damaged") == before
    assert checkpoint.steps(str(out)) == [10, 20] and checkpoint.damage(out / "20") is None


@pytest.mark.parametrize("harm", ["overwrite", "meta/metadata", "state/_METADATA"])
def test_overwritten_or_missing_files_fall_back(trained, harm, capsys):
    """(b) 64 bytes overwritten in place (in the Adam state's data file) and (c) a deleted
    meta/metadata or state/_METADATA: the same fallback, in one line."""
    out = copy(trained, f"harm-{harm.replace('/', '-')}")
    if harm == "overwrite":
        overwrite(out / "20")
    else:
        (out / "20" / harm).unlink()
    before = snapshot(out / "20")
    if harm == "overwrite":  # a whole resume: the losses of a resume from 10
        losses, _ = resume(trained["data_dir"], out)
        assert losses == trained["losses"]
        kept = out / "20.damaged"
    else:  # an evaluation's choice: nothing renamed
        assert checkpoint.restore_meta(str(out))[0] == 10
        kept = out / "20"
    line = one_line(capsys.readouterr().err)
    why = "sha256 mismatch" if harm == "overwrite" else f"{harm}: missing"
    assert line.startswith(f"jaxgpt: checkpoint 20 in {out} is damaged (") and why in line, line
    assert "using checkpoint 10" in line
    assert snapshot(kept) == before


def test_nothing_usable_is_one_line_and_exit_2(trained):
    """(d) Every checkpoint damaged: resume, eval_only, sample and convert each print one
    line and exit 2, and change no file."""
    out = copy(trained, "all-damaged")
    truncate(out / "20")
    overwrite(out / "10")
    before = snapshot(out)
    cfg = run_cfg(trained["data_dir"], out, init_from="resume")
    commands = [
        ["train", *train_args(cfg)],
        ["train", *train_args(cfg), "--eval_only=True"],
        ["sample", "--out_dir", str(out), "--max_new_tokens=4", "--num_samples=1"],
        ["convert", "--from", "jaxgpt", str(out), "--to", "nanogpt", str(out.parent / "nano")],
    ]
    for args in commands:
        proc = cli(*args)
        line = one_line(proc.stderr)
        assert proc.returncode == 2, (args[0], proc.stderr)
        assert line.startswith(f"jaxgpt: error: no usable checkpoint: checkpoint 20 in {out} is")
        assert "checkpoint 10 is damaged" in line
        assert snapshot(out) == before
    assert not (out.parent / "nano").exists()


def test_legacy_out_dir_without_manifests(trained, capsys):
    """(e) Checkpoints written before manifests resume as before, silently; a damaged one
    is a one-line error naming the step, with no orbax thread's traceback after it."""
    out = copy(trained, "legacy")
    for manifest in out.glob(f"*/{checkpoint.MANIFEST}"):
        manifest.unlink()
    shutil.rmtree(out / "20")
    assert resume(trained["data_dir"], out)[0] == trained["losses"]
    assert capsys.readouterr().err == ""
    for manifest in out.glob(f"*/{checkpoint.MANIFEST}"):  # the run wrote sealed steps
        manifest.unlink()
    truncate(out / "20", every=True)  # sample reads the parameters only
    cfg = run_cfg(trained["data_dir"], out, init_from="resume")
    for args in (
        ["sample", "--out_dir", str(out), "--max_new_tokens=4", "--num_samples=1"],
        ["train", *train_args(cfg)],  # the whole state: many reads fail at once
    ):
        proc = cli(*args)
        line = one_line(proc.stderr)
        assert proc.returncode == 2, proc.stderr
        assert line.startswith(f"jaxgpt: error: checkpoint 20 in {out} is damaged (it has no")
