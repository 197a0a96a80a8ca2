"""`kdlab train`: the Hydra application (also runnable as `python -m kdlab.train`).

Methods are the `method` config group, the root config's default being `kd`. Users select one with
`+method=NAME` (the syntax of every kdlab command, sweep and W&B sweep file); `main` rewrites that
to the group override `method=NAME` before Hydra reads the command line, so `kdlab train`,
`python -m kdlab.train` and Lightning's DDP re-launch of either accept both spellings.
"""

import logging
import re
import sys

import hydra
from omegaconf import DictConfig

import kdlab.conf  # noqa: F401  (registers the `divergence` config group from the divergence registry)

log = logging.getLogger(__name__)
_ADD_METHOD = re.compile(r"^\+\+?method=")


def method_overrides(overrides: list[str]) -> list[str]:
    """The overrides with `+method=X` (or `++method=X`) written as the group override `method=X`."""
    return [_ADD_METHOD.sub("method=", override) for override in overrides]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """Run one job; return `cfg.optimized_metric` for a sweeper (Optuna maximises or minimises it)."""
    # Imported here so that `--help` and `--cfg job` answer without loading torch and Lightning.
    from kdlab.run import run

    metrics = run(cfg)
    if cfg.optimized_metric not in metrics:
        log.warning("optimized_metric=%s was not logged by this run; it logged: %s", cfg.optimized_metric, ", ".join(metrics))
    return metrics.get(cfg.optimized_metric)


def main() -> None:
    sys.argv = [sys.argv[0], *method_overrides(sys.argv[1:])]
    _train()


if __name__ == "__main__":
    main()
