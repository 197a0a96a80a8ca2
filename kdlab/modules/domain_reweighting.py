"""DDK's domain-discrepancy-guided sampling (Liu et al., NeurIPS 2024; docs/methods.md §7.8). DDK has
no public code: this is the structure the paper states, every formula [unverified] and behind a flag.

Every `interval` optimiser steps, for each domain i of a multi-domain datamodule
(`kdlab.data.domains`), the student's and the teacher's token-mean cross-entropy on the domain's
validation rows, ℓ_S[i] and ℓ_T[i], give the evidence

    e[i] = ℓ_S[i] / ℓ_T[i]        discrepancy="ratio" (the paper's domain discrepancy factor)
    e[i] = ℓ_S[i] − ℓ_T[i]        discrepancy="difference"

and the mixture r (uniform at the start) is replaced by the factor-smooth update

    ψ[i] = r[i] · exp(e[i])       carry=true (the previous factor carried over); carry=false: ψ[i] = exp(e[i])
    r'[i] = η · ψ[i] / Σ_j ψ[j] + (1 − η) / N          η = smoothing

from which the next training batches draw their domains. carry=false, η=1 is the plain softmax factor
`exp(ℓ_S/ℓ_T) / Σ_j exp(ℓ_S/ℓ_T)`; η=0 keeps the uniform mixture (plain KD on the mixture, the baseline).

`DomainReweighting` (the Lightning callback of `+method=ddk`) measures at the start of training, at
every update and on the test split. Logged per domain d: `ddk/weight/<d>` (the mixture after the
update), `ddk/discrepancy/<d>` (e), `ddk/student_nll/<d>`, `ddk/teacher_nll/<d>` and, when the
datamodule has `oracles`, `ddk/golden_gap/<d>` = ℓ_S − ℓ_{p*_d} (the student's token KL to the
domain's true language, estimated on its held-out text); at test the same under `test/ddk_*/<d>`.
The history is written to `<run dir>/ddk_weights.json` and drawn in `<run dir>/ddk_weights.png`.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.results import write_json_atomic
from kdlab.models.hf import lm_forward
from kdlab.tokens import token_logps

DISCREPANCIES = ("ratio", "difference")
HISTORY_FILE, FIGURE = "ddk_weights.json", "ddk_weights.png"


def ddk_update(weights: Tensor, student_nll: Tensor, teacher_nll: Tensor, *, smoothing: float, discrepancy: str, carry: bool) -> Tensor:
    """The next domain mixture `[N]` from the current one and the per-domain cross-entropies (module docstring)."""
    evidence = student_nll / teacher_nll if discrepancy == "ratio" else student_nll - teacher_nll
    logits = evidence + (weights.log() if carry else 0.0)
    return smoothing * torch.softmax(logits, dim=0) + (1 - smoothing) / len(weights)


@torch.no_grad()
def domain_nll(model: nn.Module, batches, vocab_size: int) -> float:
    """The token-mean NLL `-Σ log p(y) / Σ 1` of `model` over the scored tokens of `batches`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        logps, scored = token_logps(lm_forward(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))[..., :vocab_size],
                                    batch["labels"].to(device))
        total, count = total - float(logps.sum()), count + int(scored.sum())
    return total / count


class DomainReweighting(L.Callback):
    """DDK's mixture updates during training (see the module docstring)."""

    def __init__(self, *, interval: int, smoothing: float, discrepancy: str, carry: bool) -> None:
        if interval < 1 or not 0.0 <= smoothing <= 1.0 or discrepancy not in DISCREPANCIES:
            raise ConfigError(f"callbacks.domain_reweighting needs interval >= 1, 0 <= smoothing <= 1 and discrepancy in {DISCREPANCIES}; "
                              f"got {interval}, {smoothing}, {discrepancy!r}")
        self.interval, self.smoothing, self.discrepancy, self.carry = interval, smoothing, discrepancy, carry
        self.history: list[dict[str, Any]] = []
        self.last_update = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if not all(hasattr(datamodule, name) for name in ("domains", "domain_weights", "set_domain_weights", "domain_loader")):
            raise ConfigError(f"+method=ddk samples training data by domain; {type(datamodule).__name__} has no domains: use dataset=oracle_domains")

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, list[float]]:
        """Per domain: the student's, the teacher's and (with `oracles`) the oracle's token NLL on `split`."""
        datamodule = trainer.datamodule
        models = {"student": pl_module.model, "teacher": pl_module.teacher}
        oracles = getattr(datamodule, "oracles", None) or {}
        was_training = pl_module.model.training
        pl_module.model.eval()
        figures: dict[str, list[float]] = {"student_nll": [], "teacher_nll": [], **({"oracle_nll": []} if oracles else {})}
        for d, name in enumerate(datamodule.domains):
            for role, model in (models | ({"oracle": oracles[name]} if oracles else {})).items():
                figures[f"{role}_nll"].append(domain_nll(model, datamodule.domain_loader(split, d), datamodule.vocab_size))
        pl_module.model.train(was_training)
        if oracles:
            figures["golden_gap"] = [s - o for s, o in zip(figures["student_nll"], figures["oracle_nll"])]
        student, teacher = torch.tensor(figures["student_nll"]), torch.tensor(figures["teacher_nll"])
        figures["discrepancy"] = (student / teacher if self.discrepancy == "ratio" else student - teacher).tolist()
        return figures

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history:  # a resumed run: the mixture it had reached
            trainer.datamodule.set_domain_weights(torch.tensor(self.history[-1]["weights"]))
            return
        self.history.append({"step": trainer.global_step, "weights": trainer.datamodule.domain_weights.tolist()} | self.measure(trainer, pl_module, "val"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.interval or step == self.last_update:
            return
        self.last_update = step
        datamodule = trainer.datamodule
        figures = self.measure(trainer, pl_module, "val")
        weights = ddk_update(datamodule.domain_weights, torch.tensor(figures["student_nll"], dtype=torch.float64),
                             torch.tensor(figures["teacher_nll"], dtype=torch.float64),
                             smoothing=self.smoothing, discrepancy=self.discrepancy, carry=self.carry)
        datamodule.set_domain_weights(weights)
        self.history.append({"step": step, "weights": weights.tolist()} | figures)
        logged = {"weight": weights.tolist()} | figures
        pl_module.log_dict({f"ddk/{key}/{name}": values[d] for key, values in logged.items() for d, name in enumerate(datamodule.domains)},
                           on_step=True, on_epoch=False)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        domains = trainer.datamodule.domains
        figures = self.measure(trainer, pl_module, "test")
        pl_module.log_dict({f"test/ddk_{key}/{name}": values[d] for key, values in figures.items() for d, name in enumerate(domains)})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        directory = Path(trainer.default_root_dir)
        domains = trainer.datamodule.domains
        write_json_atomic(directory / HISTORY_FILE, {"domains": domains, "history": self.history})
        weights_figure(domains, self.history).savefig(directory / FIGURE, dpi=120)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "last_update": self.last_update}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history, self.last_update = state_dict["history"], state_dict["last_update"]


def weights_figure(domains: list[str], history: list[dict[str, Any]]) -> Figure:
    """The sampling weight and the discrepancy of each domain against the training step."""
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    steps = [entry["step"] for entry in history]
    for d, name in enumerate(domains):
        axes[0].plot(steps, [entry["weights"][d] for entry in history], marker="o", markersize=2.5, label=name)
        axes[1].plot(steps, [entry["discrepancy"][d] for entry in history], marker="o", markersize=2.5, label=name)
    for ax, title in zip(axes, ("sampling weight r", "discrepancy (student vs teacher CE)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False)
    return figure
