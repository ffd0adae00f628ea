"""The command line: the main path end to end, and every user error as one line, exit 2."""

import re
import urllib.request

import pytest
from conftest import synthetic_text

from jaxgpt import cli


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result, *fragments):
    code, _, err = result
    assert code == 2, result
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxgpt: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """prepare -> train -> a checkpoint, through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    text = root / "input.txt"
    text.write_text(synthetic_text(8000))
    assert (
        cli.main(
            [
                "prepare",
                "char",
                "--input",
                str(text),
                "--name",
                "t",
                "--data_dir",
                str(root / "data"),
            ]
        )
        == 0
    )
    args = [
        "train",
        f"--data_dir={root / 'data'}",
        "--dataset=t",
        f"--out_dir={root / 'out'}",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=16",
        "--block_size=8",
        "--batch_size=4",
        "--max_iters=10",
        "--eval_interval=10",
        "--eval_iters=2",
        "--log_interval=5",
    ]
    assert cli.main(args) == 0
    return root


def test_sample_prints_text_from_checkpoint(trained, capsys):
    code, out, _ = run_cli(
        capsys,
        "sample",
        f"--out_dir={trained / 'out'}",
        "--num_samples=2",
        "--max_new_tokens=20",
        "--start=The king",
    )
    assert code == 0
    samples = out.split("---------------\n")
    assert len(samples) == 3 and samples[-1] == ""
    assert all(s.startswith("The king") and len(s) == len("The king") + 20 + 1 for s in samples[:2])


def test_sample_kv_cache_flag_stop_and_timing_line(trained, capsys):
    args = ["sample", f"--out_dir={trained / 'out'}", "--num_samples=2", "--max_new_tokens=20"]
    code, cached, err = run_cli(capsys, *args, "--start=The king")
    timing = r"generated 40 tokens in [\d.]+ s \([\d.]+ tokens/s, compile [\d.]+ s\)"
    assert code == 0 and re.fullmatch(timing, err.strip().splitlines()[-1]), err
    code, plain, _ = run_cli(capsys, *args, "--start=The king", "--kv_cache=False")
    assert code == 0 and plain == cached  # same seed, same tokens
    first = cached.split("---------------\n")[0][len("The king") : -1]
    stop = first[3:5]
    code, out, err = run_cli(capsys, *args, "--start=The king", f"--stop={stop}")
    assert out.split("---------------\n")[0] == "The king" + first[: first.index(stop)] + "\n"
    # the count is of the tokens kept (characters here, the stop's included), not sampled
    counts = r"generated (\d+) tokens in .*, compile [\d.]+ s; (\d+) sampled, cut at the stops\)"
    kept, sampled = map(int, re.fullmatch(counts, err.strip().splitlines()[-1]).groups())
    second = out.split("---------------\n")[1][len("The king") : -1]
    assert kept == first.index(stop) + len(stop) + len(second) + (
        len(stop) if len(second) < 20 else 0
    )
    assert sampled <= 40 and kept < sampled
    assert_user_error(run_cli(capsys, *args, "--top_p=1.5"), "top_p")


def test_sample_start_from_file(trained, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Good night")
    code, out, _ = run_cli(
        capsys,
        "sample",
        f"--out_dir={trained / 'out'}",
        "--num_samples=1",
        "--max_new_tokens=5",
        f"--start=FILE:{prompt}",
        "--temperature=0",
    )
    assert code == 0 and out.startswith("Good night")


def test_out_of_vocabulary_prompt(trained, capsys):
    result = run_cli(capsys, "sample", f"--out_dir={trained / 'out'}", "--start=zebra Ω")
    assert_user_error(result, "not in the model's vocabulary", "Ω")


def test_missing_checkpoint(tmp_path, capsys):
    assert_user_error(run_cli(capsys, "sample", f"--out_dir={tmp_path}"), "no checkpoint")


def test_unknown_key_suggests_the_closest(capsys):
    assert_user_error(run_cli(capsys, "train", "--max_itres=3"), "'max_itres'", "'max_iters'")


def test_wrong_type(capsys):
    assert_user_error(run_cli(capsys, "train", "--learning_rate=fast"), "learning_rate", "float")
    assert_user_error(run_cli(capsys, "train", "--bias=maybe"), "bias", "bool")


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("config = dict(n_layer=2,\n")
    assert_user_error(run_cli(capsys, "train", str(bad)), "does not load")
    typo = tmp_path / "typo.py"
    typo.write_text("config = dict(n_layyer=2)\n")
    assert_user_error(run_cli(capsys, "train", str(typo)), "'n_layyer'", "'n_layer'")


def test_missing_dataset(tmp_path, capsys):
    result = run_cli(capsys, "train", f"--data_dir={tmp_path}", "--dataset=nothing")
    assert_user_error(result, "jaxgpt prepare nothing")


def test_offline_without_input(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXGPT_SHAKESPEARE", raising=False)
    result = run_cli(capsys, "prepare", "shakespeare_char", "--data_dir", str(tmp_path))
    assert_user_error(result, "--input")
    assert not (tmp_path / "shakespeare_char").exists()


def test_missing_input_file(tmp_path, capsys):
    result = run_cli(capsys, "prepare", "shakespeare_char", "--input", str(tmp_path / "no.txt"))
    assert_user_error(result, "no such file")
