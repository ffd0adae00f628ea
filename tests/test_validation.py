"""Every config value is range-checked, and a malformed dataset is refused, before anything
is written: one line naming the key, the value and what is allowed, exit 2, no out_dir.

The ranges come from config.RANGES and CHOICES; the cases below are generated from those
tables (a value just outside each bound), so a key added to the table is tested too.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import ROOT
from conftest import tiny_run
from test_cli import assert_user_error, run_cli

from jaxgpt import config
from jaxgpt.config import ConfigError, GPTConfig, TrainConfig, _field_types


def outside(spec: str, typ: type) -> list:
    """Values just outside each finite bound of `spec` (and NaN, inf for floats)."""
    bad = [] if typ is int else [math.nan, math.inf]
    parts = [p.strip() for p in spec.split("|")]
    singles = [config._number(p) for p in parts if p[0] not in "[("]
    (interval,) = (p for p in parts if p[0] in "[(")  # the tables use one interval
    lo, hi = (config._number(x) for x in interval[1:-1].split(","))
    step = 1 if typ is int else 0.5
    below = lo if interval[0] == "(" else lo - step
    if below not in singles:  # "-1 | [1, inf)": 0 is outside, -1 is not
        bad.append(typ(below))
    if singles:
        bad.append(typ(min(singles) - step))
    if math.isfinite(hi):
        bad.append(typ(hi) if interval[-1] == ")" else typ(hi + step))
    return bad


def lowest(spec: str):
    """The least value `spec` allows, or None when its lower bound is open."""
    parts = [p.strip() for p in spec.split("|")]
    values = [config._number(p[1:-1].split(",")[0]) for p in parts if p[0] == "["]
    values += [config._number(p) for p in parts if p[0] not in "[("]
    return min(values) if values and not any(p[0] == "(" for p in parts) else None


TYPES = _field_types(TrainConfig)
RANGE_CASES = [
    (key, value)
    for key, spec in config.RANGES.items()
    for value in outside(spec, TYPES[key])
]  # fmt: skip


def test_every_key_is_checked_or_free():
    """Each field of both configs has a range, a set of choices, is a bool, or is a string
    that takes any text: a new key must be put in one of the tables."""
    for cls in (TrainConfig, GPTConfig):
        for key, typ in _field_types(cls).items():
            known = key in config.RANGES or key in config.CHOICES or key in config.STR_KEYS
            assert typ is bool or known, f"{cls.__name__}.{key} has no range or choices"


@pytest.mark.parametrize("key, value", RANGE_CASES, ids=[f"{k}={v}" for k, v in RANGE_CASES])
def test_out_of_range_is_one_line_naming_key_value_and_range(key, value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{key: value})
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{key}={value!r} must be "), message
    assert config.describe_range(config.RANGES[key]) in message


@pytest.mark.parametrize("key", sorted(k for k in config.CHOICES if k in TYPES))
def test_unknown_choice_lists_the_choices(key):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{key: "nonsense"})
    assert str(e.value) == f"{key}='nonsense': choose one of {', '.join(config.CHOICES[key])}"


@pytest.mark.parametrize(
    "key", sorted(k for k in config.RANGES if lowest(config.RANGES[k]) is not None)
)
def test_lowest_allowed_value_is_accepted(key):
    base = dict(decay_lr=False, n_head=1, n_embd=8, mesh_data=1)  # clear of the checks
    TrainConfig(**{**base, key: TYPES[key](lowest(config.RANGES[key]))})  # that relate keys


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(warmup_iters=100, lr_decay_iters=50),
            "warmup_iters=100 must be <= lr_decay_iters=50",
        ),
        (dict(mesh_data=-1, mesh_tensor=-1), "at most one of mesh_data, mesh_fsdp, mesh_tensor"),
        (dict(n_embd=130, n_head=4), "n_embd=130 is not divisible by n_head=4"),
        (dict(n_kv_head=5), "n_kv_head=5 must divide n_head=12"),
        (dict(pos_encoding="rope", n_embd=36, n_head=4), "even head size"),
        (dict(optimizer="muon", learning_rate=0.0), "learning_rate=0.0 must be > 0"),
        (dict(steps_per_call=3), "eval_interval=2000 must be a multiple of steps_per_call=3"),
        (dict(out_dir=""), "out_dir must not be empty"),
        (dict(n_layer="2"), "n_layer expects int, got str '2'"),
        (dict(bias=1), "bias expects bool, got int 1"),
    ],
)
def test_keys_checked_against_each_other(kw, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_warmup_longer_than_decay_is_fine_without_decay():
    TrainConfig(warmup_iters=100, lr_decay_iters=50, decay_lr=False)


def test_model_config_checks_vocab_size():
    with pytest.raises(ConfigError, match="vocab_size=0 must be >= 1"):
        GPTConfig(vocab_size=0)


# --- through the command line: nothing is created --------------------------------------


CLI_CASES = {
    "negative lr": (["--learning_rate=-1"], "learning_rate=-1.0 must be >= 0"),
    "dropout 1.5": (["--dropout=1.5"], "dropout=1.5 must be in [0, 1)"),
    "beta2 1": (["--beta2=1.0"], "beta2=1.0 must be in [0, 1)"),
    "weight decay": (["--weight_decay=-0.1"], "weight_decay=-0.1 must be >= 0"),
    "grad clip": (["--grad_clip=-1"], "grad_clip=-1.0 must be >= 0"),
    "nan lr": (["--learning_rate=nan"], "learning_rate=nan must be a finite number >= 0"),
    "eval interval": (["--eval_interval=0"], "eval_interval=0 must be >= 1"),
    "mesh": (["--mesh_fsdp=0"], "mesh_fsdp=0 must be -1 or >= 1"),
    "heads": (["--n_embd=130", "--n_head=4"], "n_embd=130 is not divisible by n_head=4"),
    "dtype": (["--dtype=float8"], "dtype='float8': choose one of float32, bfloat16, float16"),
    "init_from": (["--init_from=resum"], "init_from='resum': choose scratch, resume"),
    "warmup": (["--warmup_iters=50", "--lr_decay_iters=40"], "must be <= lr_decay_iters=40"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_value_on_the_command_line_creates_nothing(case, data_dir, tmp_path, capsys):
    overrides, fragment = CLI_CASES[case]
    out = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in config.to_dict(tiny_run(data_dir, str(out))).items()]
    assert_user_error(run_cli(capsys, "train", *args, *overrides), fragment)
    assert not out.exists()


def run_jaxgpt(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "jaxgpt.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, fragment: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["--n_embd=130", "--n_head=4"], "n_embd=130 is not divisible by n_head=4"),
        (["--dtype=float8"], "dtype='float8'"),
    ],
)
def test_in_a_process_no_traceback_and_no_out_dir(overrides, fragment, data_dir, tmp_path):
    """The issue's cases that left an empty out_dir and orbax tracebacks at exit."""
    args = [f"--data_dir={data_dir}", "--dataset=tiny", "--out_dir=out", *overrides]
    proc = run_jaxgpt("train", *args, cwd=tmp_path)
    assert_one_line_exit_2(proc, fragment)
    assert list(tmp_path.iterdir()) == []


# --- malformed datasets -------------------------------------------------------------------


def good_meta(data_dir) -> dict:
    return json.loads((Path(data_dir) / "tiny" / "meta.json").read_text())


META_CASES = {
    "invalid JSON": ('{"kind": "char", ', "is not valid JSON"),
    "empty object": ("{}", "kind=None is not a tokenizer kind"),
    "a list": ("[1]", "holds a JSON list, not an object"),
    "a number": ("3", "holds a JSON int, not an object"),
    "vocab_size a string": (dict(vocab_size="32"), "vocab_size='32' must be an int"),
    "vocab_size a bool": (dict(vocab_size=True), "vocab_size=True must be an int"),
    "vocab_size too big": (dict(vocab_size=70000), "vocab_size=70000 must be an int in [1, 65536]"),
    "no chars": (dict(chars=None), "a char vocabulary needs `chars`"),
    "chars too few": (dict(chars=["a"]), "a char vocabulary needs `chars`"),
    "negative count": (dict(train_tokens=-5), "train_tokens=-5 must be an int >= 0"),
    "count a float": (dict(val_tokens=1.5), "val_tokens=1.5 must be an int >= 0"),
    "unknown kind": (dict(kind="words"), "kind='words' is not a tokenizer kind"),
}


@pytest.fixture(scope="module")
def bad_data(data_dir, tmp_path_factory):
    """A copy of the tiny dataset per defect of its meta.json, and two with a bin missing."""
    root = tmp_path_factory.mktemp("bad_meta")
    for i, (content, _) in enumerate(META_CASES.values()):
        shutil.copytree(Path(data_dir) / "tiny", root / f"m{i}")
        text = content if isinstance(content, str) else json.dumps(good_meta(data_dir) | content)
        (root / f"m{i}" / "meta.json").write_text(text)
    for split in ("train", "val"):
        shutil.copytree(Path(data_dir) / "tiny", root / f"no_{split}")
        (root / f"no_{split}" / f"{split}.bin").unlink()
    return root


@pytest.mark.parametrize("case", list(META_CASES))
def test_malformed_meta_json_is_one_line(case, bad_data, tmp_path, capsys):
    i = list(META_CASES).index(case)
    out = tmp_path / "out"
    cfg = tiny_run(str(bad_data), str(out), dataset=f"m{i}")
    args = [f"--{k}={v}" for k, v in config.to_dict(cfg).items()]
    assert_user_error(run_cli(capsys, "train", *args), "meta.json", META_CASES[case][1])
    assert not out.exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_bin_is_one_line(split, bad_data, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tiny_run(str(bad_data), str(out), dataset=f"no_{split}")
    args = [f"--{k}={v}" for k, v in config.to_dict(cfg).items()]
    assert_user_error(run_cli(capsys, "train", *args), f"missing {bad_data}/no_{split}/{split}.bin")
    assert not out.exists()


def test_malformed_meta_in_a_process_has_no_traceback(bad_data, tmp_path):
    args = [f"--data_dir={bad_data}", "--dataset=m0", "--out_dir=out"]
    assert_one_line_exit_2(run_jaxgpt("train", *args, cwd=tmp_path), "is not valid JSON")
    assert list(tmp_path.iterdir()) == []
