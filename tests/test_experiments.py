"""Every experiment config loads, builds a TrainConfig and a model (shapes only, free)."""

from pathlib import Path

import jax
import pytest

from jaxgpt.config import load_train_config
from jaxgpt.interop import hf
from jaxgpt.model import abstract_params, num_params, unbox

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.py"))
DATASET_VOCAB = {"shakespeare_char": 65}  # the rest are GPT-2 BPE datasets


def model_for(cfg):
    """The model a run would build: GPT-2's shape for init_from=gpt2*, else the config's."""
    if cfg.init_from in hf.GPT2_MODELS:
        return hf.gpt2_config(cfg.init_from)
    return cfg.model_config(cfg.vocab_size or DATASET_VOCAB.get(cfg.dataset, 50257))


# total parameters of OpenAI's checkpoints (transformers' count, wpe and the tied head once)
GPT2_TOTALS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_builds(path):
    cfg = load_train_config(str(path), [])
    module_doc = path.read_text().split('"""')[1]
    assert "jaxgpt " in module_doc  # the command
    assert "xpected" in module_doc or "publishes" in module_doc  # the result to reproduce
    config = model_for(cfg)
    params = unbox(abstract_params(config))
    assert all(isinstance(p, jax.ShapeDtypeStruct) for p in jax.tree.leaves(params))
    if cfg.init_from in GPT2_TOTALS:  # the eval and finetune configs: OpenAI's shapes
        assert num_params(params, config, non_embedding=False) == GPT2_TOTALS[cfg.init_from]


def test_every_gpt2_size_has_an_eval_config():
    inits = {load_train_config(str(p), []).init_from for p in EXPERIMENTS}
    assert set(GPT2_TOTALS) <= inits


def test_train_gpt2_is_nanogpts_run():
    cfg = load_train_config(str(Path(EXPERIMENTS[0]).parent / "train_gpt2.py"), [])
    assert cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size == 491_520
    config = model_for(cfg)
    millions = num_params(unbox(abstract_params(config)), config) / 1e6
    assert config.vocab_size == 50304 and round(millions, 2) == 123.59  # nanoGPT prints 123.59M
