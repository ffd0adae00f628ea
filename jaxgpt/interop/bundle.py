"""What travels between model formats: a Bundle of parameters, config, tokenizer and run.

Every reader (hf.py, nanogpt.py, convert.py's jaxgpt checkpoints) returns a Bundle, every
writer takes one, so any format converts to any other through it.
"""

import dataclasses
from typing import Any

from jaxgpt.config import GPTConfig

FORMATS = ("hf", "nanogpt", "jaxgpt")  # what `jaxgpt convert` reads and writes


class ConvertError(ValueError):
    """A file of the wrong kind, a missing key or a shape/vocab mismatch; one line, exit 2."""


@dataclasses.dataclass
class Moments:
    """AdamW's running averages in jaxgpt's parameter layout, and its step count."""

    mu: dict  # exp_avg
    nu: dict  # exp_avg_sq
    count: int  # updates taken (torch's `step`, optax's count)


@dataclasses.dataclass
class Bundle:
    """A model with what travels with it between formats: parameters in jaxgpt's layout
    (h_0.. even for scan_layers models), its config and tokenizer, and when the source has
    them the run config, progress and optimizer state."""

    params: dict
    config: GPTConfig
    tokenizer: dict  # tokenizer meta, see tokenizer.from_meta
    run: dict | None = None  # TrainConfig fields
    iter_num: int = 0
    best_val_loss: float = float("inf")
    moments: Moments | None = None
    # optimizer=muon: the whole jaxgpt optimizer state (Muon's and its AdamW group's), which
    # only a jaxgpt checkpoint takes; moments is None then
    opt_state: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)  # printed by the CLI
