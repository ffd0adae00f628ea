"""`jaxgpt train [CONFIG.py] [--key=value ...]`: nanoGPT's train.py (loop.py does the work).

The config is checked whole (config.py) before anything is written: a bad value is one
line and exit 2, with no out_dir created. `-h`/`--help` lists every key (keyhelp.py).
"""

from pathlib import Path

from jaxgpt.cli import keyhelp
from jaxgpt.config import ConfigError, TrainConfig

SPECIAL_INITS = ("scratch", "resume")


def add_parser(sub) -> None:
    sub.add_parser("train", help="train a model: jaxgpt train [CONFIG.py] [--key=value ...]")


def split_config_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.py] [--key=value ...]` -> (the config file or None, the overrides)."""
    if argv and not argv[0].startswith("--"):
        return argv[0], argv[1:]
    return None, argv


USAGE = """usage: jaxgpt train [CONFIG.py] [--key=value ...]

nanoGPT's train.py: TrainConfig's defaults, then the `config` dict of CONFIG.py (an
experiments/*.py file), then the --key=value overrides. Every key, its type, default,
description and allowed values:"""


def help_text() -> str:
    return USAGE + "\n" + keyhelp.keys_help()


def load_pretrained(cfg: TrainConfig):
    """The loader loop.setup takes for init_from=gpt2*|DIR: the weights come from interop.
    An init_from that is none of scratch, resume, a GPT-2 name or a folder is refused here,
    before loop.setup creates out_dir."""
    if cfg.init_from in SPECIAL_INITS:
        return None
    from jaxgpt.interop import hf

    if cfg.init_from not in hf.GPT2_MODELS and not Path(cfg.init_from).is_dir():
        raise ConfigError(
            f"init_from={cfg.init_from!r}: choose scratch, resume, one of "
            f"{', '.join(hf.GPT2_MODELS)} or a Hugging Face model directory"
        )
    return hf.run_weights


def run(argv: list[str]) -> int:
    if keyhelp.wants_help(argv):
        print(help_text())
        return 0
    from jaxgpt.config import load_train_config

    cfg = load_train_config(*split_config_file(argv))
    pretrained = load_pretrained(cfg)
    from jaxgpt import loop

    run = loop.setup(cfg, pretrained)
    loop.train_loop(run)
    return loop.exit_code(run)
