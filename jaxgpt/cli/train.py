"""`jaxgpt train [CONFIG.py] [--key=value ...]`: nanoGPT's train.py (loop.py does the work)."""

from jaxgpt.config import TrainConfig

SPECIAL_INITS = ("scratch", "resume")


def add_parser(sub) -> None:
    sub.add_parser("train", help="train a model: jaxgpt train [CONFIG.py] [--key=value ...]")


def split_config_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.py] [--key=value ...]` -> (the config file or None, the overrides)."""
    if argv and not argv[0].startswith("--"):
        return argv[0], argv[1:]
    return None, argv


def load_pretrained(cfg: TrainConfig):
    """The loader loop.setup takes for init_from=gpt2*|DIR: the weights come from interop."""
    if cfg.init_from in SPECIAL_INITS:
        return None
    from jaxgpt.interop import hf

    return hf.run_weights


def run(argv: list[str]) -> int:
    from jaxgpt.config import load_train_config

    cfg = load_train_config(*split_config_file(argv))
    from jaxgpt import loop

    run = loop.setup(cfg, load_pretrained(cfg))
    loop.train_loop(run)
    return loop.exit_code(run)
