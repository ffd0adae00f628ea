"""Hugging Face GPT-2 weights: the hub's gpt2 models, local directories, and export.

A directory is what transformers' `save_pretrained` writes for a GPT2LMHeadModel:
`config.json` plus `model.safetensors` (or shards with an index, or `pytorch_model.bin`).
`init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl` downloads those two files through
huggingface_hub (transformers' own downloader, and its cache); `init_from=PATH` reads a
local directory. An exported directory loads in transformers and computes jaxgpt's
logits; it also carries the tokenizer (`jaxgpt_tokenizer.json`, and GPT-2's
vocab.json/merges.txt when the local BPE files are known), so it converts back intact.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from jaxgpt.config import ConfigError, GPTConfig, TrainConfig
from jaxgpt.interop.bundle import Bundle, ConvertError
from jaxgpt.interop.statedict import config_from_hf, from_hf, hf_config, to_hf
from jaxgpt.model import stack_layers
from jaxgpt.prep.tokenizer import GPT2_BPE_ENV, BPETokenizer

# OpenAI's checkpoints: (n_layer, n_head, n_embd); all have block 1024, vocab 50257, biases
GPT2_MODELS = {
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
}
HUB_OWNER = "openai-community"
TOKENIZER_FILE = "jaxgpt_tokenizer.json"


def bpe_meta() -> dict:
    """The tokenizer meta of GPT-2's BPE (what BPETokenizer().meta() returns)."""
    return {"kind": "bpe", "encoding": "gpt2", "vocab_size": BPETokenizer.vocab_size}


def gpt2_config(name: str) -> GPTConfig:
    """The shape of an OpenAI GPT-2 checkpoint, without downloading it."""
    n_layer, n_head, n_embd = GPT2_MODELS[name]
    return GPTConfig(
        block_size=1024, vocab_size=50257, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )


def load(init_from: str) -> Bundle:
    """A GPT-2 by name (from the hub) or a local Hugging Face directory."""
    if init_from in GPT2_MODELS:
        return load_dir(download(init_from))
    if not Path(init_from).exists():
        names = ", ".join(GPT2_MODELS)
        raise ConvertError(f"{init_from!r} is neither a GPT-2 name ({names}) nor a directory")
    return load_dir(init_from)


def download(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError(f"{name} needs huggingface_hub: pip install 'jaxgpt[gpt2]'") from None
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
    try:
        return Path(snapshot_download(f"{HUB_OWNER}/{name}", allow_patterns=patterns))
    except Exception as e:  # offline, no such repo, ...: one line for the user
        raise ConvertError(
            f"cannot get {HUB_OWNER}/{name} from the Hugging Face hub ({type(e).__name__}); "
            "offline, pass --init_from=PATH to a directory saved by transformers"
        ) from None


def load_dir(path) -> Bundle:
    """Parameters, config and tokenizer of a GPT-2 saved by transformers (or by save_dir)."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ConvertError(
            f"{path} is not a Hugging Face model directory (no config.json); other formats: "
            "jaxgpt convert"
        )
    try:
        hf = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{config_file} is not JSON: {e}") from None
    config = config_from_hf(hf)
    try:
        params = from_hf(read_state_dict(path), config)
    except ConvertError as e:
        raise ConvertError(f"{path}: {e}") from None
    tokenizer = read_tokenizer(path)
    if tokenizer["vocab_size"] > config.vocab_size:
        raise ConvertError(
            f"{path}: tokenizer has {tokenizer['vocab_size']} tokens but the model "
            f"vocab_size is {config.vocab_size}"
        )
    return Bundle(params, config, tokenizer)


def from_model(model) -> Bundle:
    """A transformers GPT2LMHeadModel (in memory) -> jaxgpt parameters and config."""
    config = config_from_hf(model.config.to_dict())
    return Bundle(from_hf(model.state_dict(), config), config, bpe_meta())


def read_state_dict(path: Path) -> dict:
    """The tensors of a HF directory as numpy arrays (torch only for pytorch_model.bin)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        files = [single]
        if not single.is_file():
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        try:
            return {k: v for f in files for k, v in load_file(f).items()}
        except (SafetensorError, OSError) as e:
            raise ConvertError(f"cannot read safetensors: {e}") from None
    pt = path / "pytorch_model.bin"
    if pt.is_file():
        import torch

        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad file
            raise ConvertError(f"{pt} is not a PyTorch state_dict ({type(e).__name__})") from None
    raise ConvertError("no model.safetensors or pytorch_model.bin")


def read_tokenizer(path: Path) -> dict:
    """The tokenizer saved with the model, else GPT-2's BPE (every OpenAI checkpoint)."""
    file = path / TOKENIZER_FILE
    if file.is_file():
        return json.loads(file.read_text())
    return bpe_meta()


def save_dir(bundle: Bundle, dst) -> Path:
    """Write a directory transformers loads (GPT2LMHeadModel.from_pretrained(dst))."""
    from safetensors.numpy import save_file

    dst = Path(dst)
    if (dst / "model.safetensors").exists():
        raise ConvertError(f"{dst} already holds a model.safetensors; choose an empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    tensors = to_hf(bundle.params, bundle.config)
    tmp = dst / "model.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})  # transformers requires the format
    (dst / "config.json").write_text(json.dumps(hf_config(bundle.config), indent=2))
    (dst / TOKENIZER_FILE).write_text(json.dumps(bundle.tokenizer))
    bpe_dir = os.environ.get(GPT2_BPE_ENV)
    if bundle.tokenizer.get("kind") == "bpe" and bpe_dir:  # transformers' GPT2Tokenizer files
        shutil.copyfile(Path(bpe_dir) / "encoder.json", dst / "vocab.json")
        shutil.copyfile(Path(bpe_dir) / "vocab.bpe", dst / "merges.txt")
    tmp.replace(dst / "model.safetensors")
    return dst


def for_run(bundle: Bundle, cfg: TrainConfig) -> tuple[dict, GPTConfig]:
    """Pretrained weights shaped for a training run, as nanoGPT's init_from=gpt2*: the
    model's shape comes from the weights; dropout and the compute options from the run;
    a smaller block_size crops the position embeddings."""
    model = bundle.config
    if cfg.block_size > model.block_size:
        raise ConfigError(
            f"block_size={cfg.block_size} is larger than the pretrained model's "
            f"{model.block_size}: pass --block_size={model.block_size} or less"
        )
    params = dict(bundle.params)
    params["wpe"] = {"embedding": np.asarray(params["wpe"]["embedding"])[: cfg.block_size]}
    model = dataclasses.replace(
        model,
        block_size=cfg.block_size,
        dropout=cfg.dropout,
        dtype=cfg.dtype,
        attention=cfg.attention,
        remat=cfg.remat,
        scan_layers=cfg.scan_layers,
    )
    if model.scan_layers:
        params = stack_layers(params)
    return params, model


def run_weights(cfg: TrainConfig) -> tuple[dict, GPTConfig]:
    """The initial weights of a run with init_from=gpt2*|DIR (loop.setup's load_pretrained)."""
    return for_run(load(cfg.init_from), cfg)
