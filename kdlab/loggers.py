"""Experiment loggers: W&B that never prompts or hangs without a network."""

import netrc
import os

import wandb
from lightning.pytorch.loggers import WandbLogger


def wandb_mode(mode: str = "auto") -> str:
    """The W&B mode to run in.

    `auto` keeps a mode the user set with `WANDB_MODE`, goes online when an API key is configured
    (`WANDB_API_KEY` or a `~/.netrc` entry for api.wandb.ai, as `wandb login` writes), and is
    `offline` otherwise: runs are saved locally for a later `wandb sync`, nobody is asked to log in.
    """
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


def wandb_logger(mode: str = "auto", **kwargs) -> WandbLogger:
    """A Lightning `WandbLogger` in the mode `wandb_mode(mode)` picks; kwargs go to `WandbLogger`."""
    return WandbLogger(mode=wandb_mode(mode), **kwargs)


def finish_wandb_run() -> None:
    """Close the W&B run, if any, so that the next job of a multirun starts its own run."""
    if wandb.run is not None:
        wandb.finish()
