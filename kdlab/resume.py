"""Finding the checkpoint an interrupted run continues from.

A run records a fingerprint of its resolved config (its own directory written as `<run>`,
`resume`/`ckpt_path` left out) in `config_fingerprint`. `resume=true` (or `ckpt_path=last`)
continues the newest run with the same fingerprint that has a `checkpoints/last.ckpt` and did
not complete (no `results.json`, or one whose status is "failed"): the run's own directory (when `hydra.run.dir` names it) or a sibling of it
(the same run name started earlier).
"""

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdlab.results import RESULTS_FILE
from kdlab.fingerprint import fingerprint

FINGERPRINT_FILE = "config_fingerprint"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of the resolved config with the run directory and the resume options left out."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("resume", None)
    config.pop("ckpt_path", None)
    text = json.dumps(config, sort_keys=True, default=str).replace(str(cfg.paths.output_dir), "<run>")
    return fingerprint(json.loads(text))


def record_fingerprint(cfg: DictConfig) -> str:
    key = config_fingerprint(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FINGERPRINT_FILE).write_text(key + "\n")
    return key


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint to start from: `ckpt_path` if it is a file, the newest unfinished matching
    run's `last.ckpt` if `resume=true` or `ckpt_path=last`, else None (a fresh start)."""
    if cfg.ckpt_path and cfg.ckpt_path != "last":
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path} does not exist")
        return path
    if not (cfg.resume or cfg.ckpt_path == "last"):
        return None
    key = config_fingerprint(cfg)
    run_dir = Path(cfg.paths.output_dir)
    candidates = [run_dir, *sorted(p for p in run_dir.parent.glob("*") if p != run_dir)]
    unfinished = [
        d / LAST_CHECKPOINT
        for d in candidates
        if (d / LAST_CHECKPOINT).is_file()
        and not _completed(d)
        and (d / FINGERPRINT_FILE).is_file()
        and (d / FINGERPRINT_FILE).read_text().strip() == key
    ]
    if not unfinished:
        raise FileNotFoundError(
            f"resume=true but no unfinished run with this config has {LAST_CHECKPOINT} under {run_dir.parent}; "
            "start without resume, or pass ckpt_path=PATH"
        )
    return max(unfinished, key=lambda p: p.stat().st_mtime)


def _completed(run_dir: Path) -> bool:
    results = run_dir / RESULTS_FILE
    return results.exists() and json.loads(results.read_text()).get("status") == "completed"
