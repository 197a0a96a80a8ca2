"""MiniPLM's refinement of the training corpus, run when fitting starts (docs/methods.md §7.7).

`DifferenceSampling` is the Lightning callback of `+method=miniplm`: before the first training batch
it scores every instance of the datamodule's train split with the run's teacher (the regime's frozen
`teacher`) and with a reference LM built from its `reference` config, keeps the `keep_ratio` share
with the highest `NLL_ref − NLL_teacher` in corpus order (`kdlab.data.miniplm`) and restricts the
training loader to it (`SplitDataModule.select_train`); the student then trains on the kept instances
only. What was kept is measured, never taken from the config:

- `<run dir>/difference_sampling.json`: the counts, the kept fraction, the score threshold and the
  mean teacher / reference NLL and score of the kept and dropped instances; on oracle data
  (`dataset=oracle`) also the mean oracle NLL per token of the full and the kept corpus (how typical of
  the true language each is) and, with a `noise` share of junk rows, the junk share before and after;
- `<run dir>/difference_scores.pt`: per instance `teacher_nll`, `reference_nll`, `score`, and `kept`;
- the same figures logged once per training epoch as `miniplm/<name>` (in results.json and W&B).

The selection is recomputed (deterministically) when a run resumes. Scores are computed with both
models in eval mode, `batch_size` instances at a time, on the module's device.
"""

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor
from torch.utils.data import DataLoader

from kdlab.data.miniplm import difference_sample, difference_scores, instance_nll
from kdlab.errors import ConfigError
from kdlab.results import write_atomic, write_json_atomic

SUMMARY_FILE = "difference_sampling.json"
SCORES_FILE = "difference_scores.pt"
REFERENCE_HINT = ("set model.reference to a small LM with the teacher's tokenizer, e.g. "
                  "'+model.reference={_target_:kdlab.models.hf.causal_lm,name_or_path:PATH}', or run experiment=miniplm_oracle")


class DifferenceSampling(L.Callback):
    """Keeps the `keep_ratio` share of the training corpus that MiniPLM's difference sampling selects
    (see the module docstring). `reference`: the config of the reference LM (`_target_` and its
    arguments), built only when fitting starts."""

    def __init__(self, *, reference: Mapping[str, Any] | None, keep_ratio: float, batch_size: int) -> None:
        if reference is None:
            raise ConfigError(f"+method=miniplm scores the corpus with a reference LM, and model.reference is not set: {REFERENCE_HINT}")
        if not 0.0 < keep_ratio <= 1.0 or batch_size < 1:
            raise ConfigError(f"callbacks.difference_sampling needs 0 < keep_ratio <= 1 and batch_size >= 1, got {keep_ratio}, {batch_size}")
        self.reference, self.keep_ratio, self.batch_size = reference, keep_ratio, batch_size
        self.summary: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "select_train") or getattr(pl_module, "teacher", None) is None:
            raise ConfigError("+method=miniplm selects from a fixed LM training corpus with the regime's teacher: "
                              "use a text dataset (dataset=oracle|instructions_jsonl|dolly) and the lm_distill regime")
        train = datamodule.split_dataset("train")
        loader = DataLoader(train, batch_size=self.batch_size, shuffle=False, collate_fn=datamodule.collate)
        reference = instantiate(self.reference).to(pl_module.device)
        teacher_nll = instance_nll(pl_module.teacher, loader, datamodule.vocab_size, len(train))
        reference_nll = instance_nll(reference, loader, datamodule.vocab_size, len(train))
        del reference
        scores = difference_scores(teacher_nll, reference_nll)
        kept = difference_sample(scores, self.keep_ratio)
        datamodule.select_train(kept.tolist())
        if len(datamodule.train_dataloader().dataset) != len(kept):
            raise ConfigError(f"{type(datamodule).__name__} does not train on a selection of its corpus: +method=miniplm cannot refine it")
        mask = torch.zeros(len(train), dtype=torch.bool)
        mask[kept] = True
        self.summary = summarise(teacher_nll, reference_nll, scores, mask, datamodule)
        if trainer.is_global_zero:
            directory = Path(trainer.default_root_dir)
            directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(directory / SUMMARY_FILE, self.summary)
            buffer = io.BytesIO()
            torch.save({"teacher_nll": teacher_nll, "reference_nll": reference_nll, "score": scores, "kept": mask}, buffer)
            write_atomic(directory / SCORES_FILE, buffer.getvalue())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log_dict({f"miniplm/{name}": float(value) for name, value in self.summary.items()}, on_step=False, on_epoch=True)


def summarise(teacher_nll: Tensor, reference_nll: Tensor, scores: Tensor, kept: Tensor, datamodule: Any) -> dict[str, float]:
    """The selection's figures (see the module docstring); `kept [N]` bool."""
    summary = {"instances": float(len(kept)), "kept": float(kept.sum()), "kept_fraction": float(kept.float().mean()),
               "threshold": float(scores[kept].min())}
    for name, values in (("teacher_nll", teacher_nll), ("reference_nll", reference_nll), ("score", scores)):
        summary |= {f"{name}_kept": float(values[kept].mean()), f"{name}_dropped": float(values[~kept].mean()) if (~kept).any() else float("nan")}
    noisy = getattr(datamodule, "noisy", None)
    if noisy is not None and noisy.any():
        summary |= {"noise_all": float(noisy.float().mean()), "noise_kept": float(noisy[kept].float().mean())}
    oracle = getattr(datamodule, "oracle", None)
    if oracle is not None:
        loader = DataLoader(datamodule.split_dataset("train"), batch_size=256, shuffle=False, collate_fn=datamodule.collate)
        oracle_nll = instance_nll(oracle, loader, datamodule.vocab_size, len(kept))
        summary |= {"oracle_nll_all": float(oracle_nll.mean()), "oracle_nll_kept": float(oracle_nll[kept].mean())}
    return summary
