"""Bad input to `jaxgpt train`: one line on stderr, exit 2, and the run folder untouched.

Each case continues (or restarts) a trained run's out_dir with one mistake and checks the
message, the exit status and that every file in out_dir is byte for byte what it was.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_process import TrainProcess, train_args
from conftest import snapshot, synthetic_text, tiny_run

from jaxgpt import cli
from jaxgpt.prep.chars import prepare_char


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A finished tiny run, and datasets with one defect each."""
    root = tmp_path_factory.mktemp("bad")
    out = root / "out"
    assert cli.main(["train", *train_args(tiny_run(data_dir, str(out), max_iters=10))]) == 0
    bad = root / "data"
    text = synthetic_text()
    prepare_char(text.replace("y", "z"), str(bad), "other_chars")  # same vocabulary size
    prepare_char(text + "Ω", str(bad), "more_chars")
    good = Path(data_dir) / "tiny"
    shutil.copytree(good, bad / "tiny")
    ids = np.fromfile(good / "train.bin", dtype=np.uint16)
    defects = {
        "odd_size": lambda f: f.write_bytes(f.read_bytes()[:-1]),
        "truncated": lambda f: f.write_bytes(f.read_bytes()[:-200]),
        "uint32": lambda f: ids.astype(np.uint32).tofile(f),
        "float32_no_count": lambda f: ids.astype(np.float32).tofile(f),
    }
    for name, damage in defects.items():
        shutil.copytree(good, bad / name)
        damage(bad / name / "train.bin")
    meta = json.loads((good / "meta.json").read_text())
    del meta["train_tokens"], meta["val_tokens"]  # as nanoGPT's own datasets have none
    (bad / "float32_no_count" / "meta.json").write_text(json.dumps(meta))
    return {"out": out, "data": str(bad), "base": tiny_run(data_dir, str(out), max_iters=20)}


def check_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("jaxgpt: error: "), (code, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])


RESUME_CASES = {
    "truncated bin (odd size)": (["--dataset=odd_size"], "odd size"),
    "truncated bin": (["--dataset=truncated"], "truncated or another dtype"),
    "wrong dtype bin": (["--dataset=uint32"], "truncated or another dtype"),
    "wrong dtype bin, no counts": (["--dataset=float32_no_count"], "wrong dtype"),
    "other vocabulary, same size": (["--dataset=other_chars"], "another vocabulary"),
    "other vocabulary": (["--dataset=more_chars"], "another vocabulary"),
    "block_size > split": (["--block_size=5000"], "block_size=5000 needs more than the 2000"),
    "changed model shape": (["--n_layer=3"], "checkpoint was trained with n_layer=2", "n_layer=3"),
    "scratch over a run": (["--init_from=scratch"], "already holds a run", "init_from=resume"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_bad_input_is_one_line_and_out_dir_unchanged(trained, case, capsys):
    overrides, *fragments = RESUME_CASES[case]
    before = snapshot(trained["out"])
    args = train_args(trained["base"]) + ["--init_from=resume", f"--data_dir={trained['data']}"]
    code = cli.main(["train", *args, *overrides])
    check_one_line_error(code, capsys.readouterr().err, *fragments)
    assert snapshot(trained["out"]) == before


def test_config_file_that_does_not_load(trained, tmp_path, capsys):
    before = snapshot(trained["out"])
    bad = tmp_path / "exp.py"
    bad.write_text("config = dict(out_dir=OUT)\n")
    code = cli.main(["train", str(bad), *train_args(trained["base"])])
    check_one_line_error(code, capsys.readouterr().err, "does not load", "NameError")
    assert snapshot(trained["out"]) == before


def test_unwritable_out_dir(trained, capsys):
    before = snapshot(trained["out"])
    a_file = trained["out"] / "metrics.jsonl"
    for out_dir in (a_file, a_file / "sub"):
        args = train_args(trained["base"]) + [f"--out_dir={out_dir}"]
        code = cli.main(["train", *args])
        check_one_line_error(code, capsys.readouterr().err, f"out_dir {out_dir} is not writable")
    if os.geteuid() != 0:  # root writes anywhere
        locked = trained["out"].parent / "locked"
        locked.mkdir(mode=0o500)
        code = cli.main(["train", *train_args(trained["base"]), f"--out_dir={locked}"])
        check_one_line_error(code, capsys.readouterr().err, "Permission denied")
    assert snapshot(trained["out"]) == before


def test_wandb_missing(trained, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    before = snapshot(trained["out"])
    args = train_args(trained["base"]) + ["--init_from=resume", "--wandb_log=True"]
    code = cli.main(["train", *args])
    check_one_line_error(code, capsys.readouterr().err, "wandb_log=True needs the wandb package")
    assert snapshot(trained["out"]) == before


def test_batch_not_divisible_by_data_parallel_devices(trained):
    """Two simulated devices need a separate process (the test process has one)."""
    before = snapshot(trained["out"])
    args = train_args(trained["base"]) + ["--init_from=resume", "--batch_size=3"]
    proc = TrainProcess(args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    code = proc.wait()
    errors = [x for x in proc.stderr.splitlines() if x.startswith("jaxgpt:")]
    assert code == 2 and "Traceback" not in proc.stderr, proc.output()
    check_one_line_error(code, errors[0], "batch_size=3 is not divisible by the 2 data-parallel")
    assert len(errors) == 1
    assert snapshot(trained["out"]) == before
