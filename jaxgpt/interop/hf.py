"""Hugging Face weights: the hub's gpt2 models, local GPT-2 and Llama directories, and export.

A directory is what transformers' `save_pretrained` writes for a GPT2LMHeadModel or a
LlamaForCausalLM: `config.json` plus `model.safetensors` (or shards with an index, or
`pytorch_model.bin`); config.json's model_type picks the mapping (statedict.py for gpt2,
llama.py for llama). `init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl` downloads those files
through huggingface_hub (transformers' own downloader, and its cache); `init_from=PATH`
reads a local directory. Its tokenizer is carried: transformers' tokenizer.json (or what
AutoTokenizer builds from the directory's other tokenizer files), else GPT-2's BPE for a
GPT-2 and token ids only for a Llama.

An export is a Llama for a rotary model and a GPT-2 otherwise; it loads in transformers
and computes jaxgpt's logits, and it carries the tokenizer (tokenizer.json for an HF one,
else `jaxgpt_tokenizer.json`, and GPT-2's vocab.json/merges.txt when the local BPE files
are known), so it converts back intact.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from jaxgpt.config import ConfigError, GPTConfig, TrainConfig
from jaxgpt.interop import llama
from jaxgpt.interop.bundle import Bundle, ConvertError
from jaxgpt.interop.statedict import config_from_hf, from_hf, gpt2_options, hf_config, to_hf
from jaxgpt.model import stack_layers
from jaxgpt.prep.tokenizer import GPT2_BPE_ENV, BPETokenizer, HFTokenizer, TokenizerError

# OpenAI's checkpoints: (n_layer, n_head, n_embd); all have block 1024, vocab 50257, biases
GPT2_MODELS = {
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
}
HUB_OWNER = "openai-community"
TOKENIZER_FILE = "jaxgpt_tokenizer.json"
# config.json's model_type -> (config.json -> GPTConfig, state_dict -> jaxgpt parameters)
FAMILIES = {
    "gpt2": (config_from_hf, from_hf),
    "llama": (llama.config_from_llama, llama.from_llama),
}


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
    """Parameters, config and tokenizer of a GPT-2 or Llama saved by transformers (or by
    save_dir)."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ConvertError(
            f"{path} is not a Hugging Face model directory (no config.json); other formats: "
            "jaxgpt convert"
        )
    hf = read_json(config_file)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ConvertError(
            f"config.json has model_type={model_type!r}: jaxgpt reads {' and '.join(FAMILIES)}"
        )
    read_config, read_params = FAMILIES[model_type]
    config = read_config(hf)
    try:
        params = read_params(read_state_dict(path), config)
    except ConvertError as e:
        raise ConvertError(f"{path}: {e}") from None
    tokenizer, note = read_tokenizer(path, config, model_type)
    if model_type == "llama":
        tokenizer |= llama.special_ids(hf)
    if tokenizer["vocab_size"] > config.vocab_size:
        raise ConvertError(
            f"{path}: tokenizer has {tokenizer['vocab_size']} tokens but the model "
            f"vocab_size is {config.vocab_size}"
        )
    return Bundle(params, config, tokenizer, notes=[note] if note else [])


def read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{file} is not JSON: {e}") from None


def from_model(model) -> Bundle:
    """A transformers GPT2LMHeadModel or LlamaForCausalLM (in memory) -> jaxgpt parameters
    and config (and GPT-2's BPE, or token ids for a Llama)."""
    model_type = model.config.model_type
    read_config, read_params = FAMILIES[model_type]
    config = read_config(model.config.to_dict())
    tokenizer = bpe_meta() if model_type == "gpt2" else ids_meta(config)
    return Bundle(read_params(model.state_dict(), config), config, tokenizer)


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
            return {k: v for f in files for k, v in _load_safetensors(f, load_file).items()}
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


def _load_safetensors(file: Path, load_file) -> dict:
    """A safetensors file as numpy arrays. safetensors.numpy has no bfloat16 (numpy lacks
    the dtype), the dtype most Llama checkpoints are stored in: such a file is read with
    ml_dtypes' bfloat16 (a JAX dependency) instead."""
    try:
        return load_file(file)
    except TypeError:  # "data type 'bfloat16' not understood"
        import ml_dtypes
        from safetensors import deserialize

        dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
        out = {}
        for name, t in deserialize(file.read_bytes()):
            if t["dtype"] not in dtypes:
                raise ConvertError(f"{file}: {name} has dtype {t['dtype']}") from None
            out[name] = np.frombuffer(t["data"], dtypes[t["dtype"]]).reshape(t["shape"])
        return out


def ids_meta(config: GPTConfig) -> dict:
    """The tokenizer meta of a model without a tokenizer: prompts and samples are ids."""
    return {"kind": "ids", "vocab_size": config.vocab_size}


HF_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.model")  # a saved HF tokenizer


def read_tokenizer(path: Path, config: GPTConfig, model_type: str) -> tuple[dict, str | None]:
    """The tokenizer saved with the model, and a note on where it came from: jaxgpt's own
    file, else transformers' tokenizer.json (with its tokenizer_config.json), else what
    AutoTokenizer builds from the other files of a saved tokenizer; else GPT-2's BPE for
    a GPT-2 (every OpenAI checkpoint) and token ids for a Llama."""
    if (path / TOKENIZER_FILE).is_file():
        return read_json(path / TOKENIZER_FILE), None
    tokenizer_json, settings = path / "tokenizer.json", path / "tokenizer_config.json"
    config_dict = read_json(settings) if settings.is_file() else None
    if tokenizer_json.is_file():
        text, source = tokenizer_json.read_text(), tokenizer_json
    elif any((path / f).is_file() for f in HF_TOKENIZER_FILES):
        text, source = _auto_tokenizer_json(path), f"{path} (through transformers' AutoTokenizer)"
    elif model_type == "gpt2":
        return bpe_meta(), None
    else:
        return ids_meta(config), f"{path} has no tokenizer: prompts and samples are token ids"
    try:
        return HFTokenizer.meta_of(text, config_dict), f"tokenizer from {source}"
    except TokenizerError as e:
        raise ConvertError(f"{source}: {e}") from None


def _auto_tokenizer_json(path: Path) -> str:
    """tokenizer.json's text for the tokenizer transformers' AutoTokenizer loads from path
    (a slow tokenizer's files, converted to a fast one)."""
    try:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(path, local_files_only=True).backend_tokenizer
    except Exception as e:  # transformers raises many kinds for files it cannot use
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise ConvertError(
            f"{path}: its tokenizer files do not load in transformers' AutoTokenizer "
            f"({type(e).__name__}: {first}); save the tokenizer as tokenizer.json"
        ) from None
    if backend.get_vocab_size(with_added_tokens=False) == 0:  # vocabulary files missing
        raise ConvertError(
            f"{path}: transformers' AutoTokenizer builds an empty vocabulary from its "
            "tokenizer files; save the tokenizer as tokenizer.json"
        )
    return backend.to_str()


def save_dir(bundle: Bundle, dst) -> Path:
    """Write a directory transformers loads: LlamaForCausalLM.from_pretrained(dst) for a
    rotary model, GPT2LMHeadModel's for one with learned positions; what the architecture
    cannot hold is refused."""
    from safetensors.numpy import save_file

    config, rope = bundle.config, bundle.config.pos_encoding == "rope"
    options = llama.llama_options(config) if rope else gpt2_options(config)
    if options:
        arch = "LlamaForCausalLM (rope)" if rope else "GPT2LMHeadModel (learned positions)"
        raise ConvertError(
            f"{arch} has no {', '.join(options)}: keep this model as a jaxgpt checkpoint"
        )
    dst = Path(dst)
    if (dst / "model.safetensors").exists():
        raise ConvertError(f"{dst} already holds a model.safetensors; choose an empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    if rope:
        tensors = llama.to_llama(bundle.params, config)
        hf = llama.llama_config(config, bundle.tokenizer)
    else:
        tensors, hf = to_hf(bundle.params, config), hf_config(config)
    tmp = dst / "model.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})  # transformers requires the format
    (dst / "config.json").write_text(json.dumps(hf, indent=2))
    write_tokenizer(bundle.tokenizer, dst)
    tmp.replace(dst / "model.safetensors")
    return dst


def write_tokenizer(tokenizer: dict, dst: Path) -> None:
    """The tokenizer files of an export: an HF tokenizer as transformers saves it (so
    AutoTokenizer loads it), any other as jaxgpt_tokenizer.json (with GPT-2's own files
    when the local BPE files are known)."""
    if tokenizer.get("kind") == "hf":
        (dst / "tokenizer.json").write_text(tokenizer["json"])
        settings = tokenizer.get("config") or {"tokenizer_class": "PreTrainedTokenizerFast"}
        (dst / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
        return
    (dst / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    bpe_dir = os.environ.get(GPT2_BPE_ENV)
    if tokenizer.get("kind") == "bpe" and bpe_dir:  # transformers' GPT2Tokenizer files
        shutil.copyfile(Path(bpe_dir) / "encoder.json", dst / "vocab.json")
        shutil.copyfile(Path(bpe_dir) / "vocab.bpe", dst / "merges.txt")


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
    if "wpe" in params:  # learned positions (rope has none)
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
