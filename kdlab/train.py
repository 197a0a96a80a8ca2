"""`kdlab train`: the Hydra application (also runnable as `python -m kdlab.train`)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg job` answer without loading torch and Lightning.
    from kdlab.run import run

    return run(cfg).get("val/acc")


if __name__ == "__main__":
    main()
