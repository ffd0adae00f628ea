"""The lecture's stages: model sizes equal the lecture's PyTorch models, every stage learns,
the optimizer is torch's AdamW, and `jaxgpt lecture` prints the table."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_text

from jaxgpt import cli
from jaxgpt.learn import lecture

PREFIXES = ("bigram", "single head", "multi-head", "feed-forward", "residual", "layernorm", "full")


def expected_params(stage: int, V: int, C: int = 32, T: int = 8, n_layer: int = 3) -> int:
    """Parameter counts of the lecture's models (sum of p.numel()), written out by hand."""
    if stage == 1:
        return V * V  # the bigram table
    embed, lm_head = V * C + T * C, C * V + V
    heads = 3 * C * C  # key, query, value of all heads together, no bias
    if stage in (2, 3):
        return embed + heads + lm_head
    if stage == 4:
        return embed + heads + (C * C + C) + lm_head
    block = heads + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    if stage == 5:
        return embed + n_layer * block + lm_head
    return embed + n_layer * (block + 4 * C) + 2 * C + lm_head  # + ln1, ln2 and ln_f


def test_param_counts_match_the_lecture():
    counts = [lecture.count_params(s) for s in lecture.STAGES]
    assert counts[:6] == [expected_params(i, 65) for i in range(1, 7)]
    assert counts[:6] == [4225, 7553, 7553, 8609, 41921, 42369]
    # stage 7 is jaxgpt.model.GPT with biases: the lecture's 10,788,929 minus its untied lm
    # head (384 * 65 + 65) plus the q/k/v biases it lacks (6 * 3 * 384)
    assert counts[6] == 10_788_929 - (384 * 65 + 65) + 6 * 3 * 384


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lecture") / "input.txt"
    path.write_text(synthetic_text(20000))
    return str(path)


# compile faster (the LLVM backend without optimisations): these runs are mostly compiling
FAST_COMPILE = "--xla_backend_optimization_level=0"


@pytest.fixture(scope="module")
def lecture_output(text_file):
    """`jaxgpt lecture` on the synthetic text, stages 1-6, 100 steps each, in a subprocess
    (for its own XLA flags)."""
    argv = ["--stages", "1-6", "--input", text_file]
    argv += ["--max_iters", "100", "--eval_interval", "50", "--eval_iters", "8"]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgpt.cli", "lecture", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def parse_table(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    table = lines[lines.index("| stage | params | val loss | reference | seconds |") :]
    assert table[1] == "|---|---:|---:|---:|---:|"
    return [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]


def test_table(lecture_output, text_file):
    rows = parse_table(lecture_output)
    assert len(rows) == 7
    assert all(r[0].startswith(p) for r, p in zip(rows, PREFIXES))
    vocab = len(set(Path(text_file).read_text()))
    for i, r in enumerate(rows[:6], start=1):  # run: a loss and the seconds it took
        assert r[1] == f"{expected_params(i, vocab):,}", r
        assert re.fullmatch(r"\d+\.\d{4}", r[2]) and re.fullmatch(r"\d+", r[4]), r
    assert rows[6][1] == "10,770,816" and rows[6][2] == "-" and rows[6][4] == "-"
    references = [r[3] for r in rows]
    assert references == ["2.4911", "2.4084", "2.2858", "2.2409", "2.0811", "2.0589", "~1.48 (GPU)"]
    # the rows run with other settings than the lecture's are marked, and the text is named
    assert [r[0].endswith(" *") for r in rows] == [True] * 6 + [False]
    assert "* run with max_iters=100, eval_interval=50, eval_iters=8" in lecture_output
    text_line = (
        f"text: --input {text_file} (20,000 characters, vocab {vocab}); not tiny Shakespeare"
    )
    assert text_line in lecture_output


def test_table_of_lecture_settings_has_no_marks():
    stage = lecture.STAGES[0]
    result = lecture.StageResult(stage.name, 4225, 2.5, 1.0, [], np.zeros(0))
    splits = {"train": np.zeros(9, np.uint16), "val": np.zeros(1, np.uint16)}
    text = lecture.Text(splits, 65, "--input input.txt", True)
    table = lecture.format_table({1: result}, {"max_iters": 3000}, text)  # stage 1's own
    assert table.splitlines()[0] == "text: --input input.txt (10 characters, vocab 65)"
    assert "*" not in table
    marked = lecture.format_table({1: result}, {"max_iters": 10}, text)
    assert "| bigram * | 4,225 | 2.5000 |" in marked


def test_every_stage_learns(lecture_output):
    """Every stage evaluates at steps 0, 50, 100 and its val loss falls; the table shows the
    last evaluation."""
    rows = parse_table(lecture_output)
    for row, stage in zip(rows[:6], lecture.STAGES):
        evals = re.findall(
            rf"^{re.escape(stage.name)}: step (\d+): train loss ([\d.]+), val loss ([\d.]+)$",
            lecture_output,
            flags=re.M,
        )
        assert [int(e[0]) for e in evals] == [0, 50, 100], stage.name
        first, last = float(evals[0][2]), float(evals[-1][2])
        assert last < first - 0.3, (stage.name, first, last)
        assert row[2] == evals[-1][2]


def test_optimizer_is_torch_adamw():
    """Three AdamW steps from the same weights and gradients as torch.optim.AdamW(lr)."""
    torch = pytest.importorskip("torch")
    cfg = lecture.stage_config(lecture.STAGES[1])
    tx = lecture.lecture_optimizer(cfg)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    tw = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([tw], lr=cfg.learning_rate)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = w + updates
        tw.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--stages", "8"], "stages are numbered 1 to 7"),
        (["--stages", "two"], "--stages 'two'"),
        (["--input", "/nonexistent/input.txt"], "no such file"),
    ],
)
def test_cli_errors(capsys, argv, fragment):
    code = cli.main(["lecture", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxgpt: error: "), err
    assert fragment in err[0]


def test_attention_is_causal():
    """Changing the last token leaves the logits of earlier positions unchanged (the Head
    that every attention stage is built from)."""
    stage = lecture.STAGES[2]  # multi-head: 4 causal heads
    cfg = lecture.stage_config(stage)
    model, params = lecture.init_model(stage, cfg, 65)
    apply = jax.jit(model.apply)
    idx = jnp.arange(8)[None]  # (1, 8)
    a = apply({"params": params}, idx)
    b = apply({"params": params}, idx.at[0, -1].set(3))
    np.testing.assert_array_equal(np.asarray(a[:, :-1]), np.asarray(b[:, :-1]))
    assert not np.allclose(a[:, -1], b[:, -1])
