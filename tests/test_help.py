"""`--help` of every command: train and bench list every config key with its type, default,
description and allowed values, grouped as nanoGPT's train.py, from config.py; the
argparse commands print their options. All exit 0."""

import re

import pytest
from test_validation import run_jaxgpt

from jaxgpt import cli, config
from jaxgpt.cli import bench, keyhelp
from jaxgpt.config import TrainConfig, _field_types

GROUPS = ["I/O", "wandb logging", "data", "model", "adamw optimizer", "learning rate decay"]
GROUPS += ["system"]


def key_rows(text: str) -> dict[str, str]:
    """{key: its help line} of the `  --key  type  default  description` rows."""
    return {m[1]: m[0] for m in re.finditer(r"^  --(\w+) .*$", text, flags=re.M)}


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_every_key(flag, capsys):
    assert cli.main(["train", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxgpt train [CONFIG.py] [--key=value ...]")
    rows, types = key_rows(out), _field_types(TrainConfig)
    defaults = config.to_dict(TrainConfig())
    assert list(rows) == list(defaults)  # every field, in config.py's order
    for key, line in rows.items():
        parts = line.split()
        assert parts[1] == types[key].__name__ and parts[2] == repr(defaults[key]), line
        assert keyhelp.allowed(key) in line, line
    headers = [line[:-1] for line in out.splitlines() if line.endswith(":") and " " not in line[:1]]
    assert [h for h in headers if h in GROUPS] == GROUPS  # nanoGPT's groups, in its order
    assert "  --learning_rate " in out and "max learning rate (>= 0)" in rows["learning_rate"]
    assert "choose" not in out and "(learned | rope)" in rows["pos_encoding"]


def test_every_key_has_a_description():
    """The comment beside each TrainConfig field: a new field without one fails here."""
    rows = keyhelp.field_comments(TrainConfig)
    assert [name for _, name, _ in rows] == list(config.to_dict(TrainConfig()))
    assert [name for _, name, text in rows if not text] == []
    assert {g for g, _, _ in rows} >= set(GROUPS)


def test_help_with_a_config_file_and_overrides(capsys):
    assert cli.main(["train", "experiments/shakespeare_char_cpu.py", "--max_iters=1", "-h"]) == 0
    assert len(key_rows(capsys.readouterr().out)) == len(config.to_dict(TrainConfig()))


def test_bench_help_lists_its_options_and_every_key(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxgpt bench")
    rows = re.findall(r"^  --(\w+) ", out, flags=re.M)
    assert rows[: len(bench.BENCH_OPTIONS)] == list(bench.BENCH_OPTIONS)
    assert set(rows) >= set(config.to_dict(TrainConfig()))


@pytest.mark.parametrize("command", ["prepare", "sample", "convert", "lecture", "plot"])
def test_argparse_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: jaxgpt {command}"), out


def test_sample_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert "samples to draw (default: 10)" in out and "(default: None)" not in out


def test_help_in_a_process(tmp_path):
    """The real command: exit 0, nothing on stderr, nothing written."""
    for argv in (["--help"], ["train", "--help"], ["bench", "-h"]):
        proc = run_jaxgpt(*argv, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "" and "usage: jaxgpt" in proc.stdout
    assert list(tmp_path.iterdir()) == []
