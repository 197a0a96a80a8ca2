"""`kdlab train`: the Hydra application (also runnable as `python -m kdlab.train`)."""

import logging

import hydra
from omegaconf import DictConfig

import kdlab.conf  # noqa: F401  (registers the `divergence` config group from the divergence registry)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; return `cfg.optimized_metric` for a sweeper (Optuna maximises or minimises it)."""
    # Imported here so that `--help` and `--cfg job` answer without loading torch and Lightning.
    from kdlab.run import run

    metrics = run(cfg)
    if cfg.optimized_metric not in metrics:
        log.warning("optimized_metric=%s was not logged by this run; it logged: %s", cfg.optimized_metric, ", ".join(metrics))
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
