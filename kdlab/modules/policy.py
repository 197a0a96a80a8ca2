"""Preference alignment: a trainable policy against a frozen reference (DPO, IPO, f-DPO, TDPO, SALSA, SFT)."""

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from kdlab.metrics.alignment import PreferencePanel, sample_metrics
from kdlab.models.generation import sample_responses
from kdlab.models.hf import lm_forward
from kdlab.modules.base import TrainingModule
from kdlab.objectives.preference import SFT, PreferenceObjective, token_logps

POLICY_DIR = "policy"


class PolicyModule(TrainingModule):
    """Trains `model` (the policy, a causal LM returning `.logits`) with a preference objective.

    The reference π_ref is frozen (eval mode, `requires_grad=False`, never given to the optimiser,
    run under `torch.no_grad`): a copy of the policy's initial weights, or — SALSA (Chegini et al.
    2024, arXiv 2411.01798) — the weight-space average ("soup") of the checkpoints in
    `reference_soup` with `soup_weights` (uniform by default). The SFT objective needs no reference.
    Unless the objective needs the reference's full logits (TDPO), the reference's sequence
    log-probs are cached by dataset index and split, so each pair meets the reference once.

    Batches (see `kdlab.data.preference`): `input_ids`, `attention_mask`, `labels` `[2B, L]` (B chosen
    rows, then B rejected rows; labels -100 on prompt and padding) and `index [B]`.

    Logged: `train/loss` and the objective's terms; per validation/test epoch the pair metrics of
    `PreferencePanel` (`<split>/accuracy`, `margin`, `reward_chosen`, `reward_rejected`, `ece`) and
    `<split>/loss`, and, on `samples` responses drawn from the policy for the datamodule's evaluation
    prompts (`eval_prompts(split, n)`), `<split>/kl_ref`, `kl_ref_k3`, `entropy`, `distinct_1`,
    `distinct_2`, `length`, plus what the datamodule's `score(responses)` returns when it has one
    (the known-reward task: `reward`, `modes`). SFT logs `<split>/nll` and the sample metrics but no KL.
    The sample metrics are also taken at step 0 (the reference itself, logged as `val/*` at step 0) and
    kept in `sample_history`, the trajectory that `kdlab.synthetic.plots.TradeoffPlot` draws.
    After fitting, the policy is saved with `save_pretrained` in `<run dir>/policy` (the next stage's
    `model.student.name_or_path`).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_classes: int | None = None,
        reference_soup: Sequence[str] | None = None,
        soup_weights: Sequence[float] | None = None,
        cache_reference: bool = True,
        samples: int = 256,
        max_new_tokens: int = 64,
        disable_dropout: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler)
        del num_classes  # preference data has no label space; `kdlab.run` passes it to every regime
        if disable_dropout:  # TRL's DPO default: log-ratios of policy and reference from the same deterministic net
            for layer in model.modules():
                if isinstance(layer, nn.Dropout):
                    layer.p = 0.0
        self.model = model
        self.objective = objective
        self.cache_reference = cache_reference and not objective.needs_reference_logits
        self.samples, self.max_new_tokens = samples, max_new_tokens
        self.reference = None
        if objective.needs_reference:
            self.reference = copy.deepcopy(model)
            if reference_soup:
                self.reference.load_state_dict(soup_state_dict([load_weights(path, model) for path in reference_soup], soup_weights))
            self.reference.requires_grad_(False).eval()
        elif reference_soup:
            raise ValueError(f"{type(objective).__name__} uses no reference model, but reference_soup was given")
        self.reference_cache: dict[str, dict[int, torch.Tensor]] = {"train": {}, "val": {}, "test": {}}
        self.panels = nn.ModuleDict({split: PreferencePanel() for split in ("val", "test")})
        self.sample_history: list[dict[str, Any]] = []  # every sample evaluation: split, step, metrics

    def train(self, mode: bool = True) -> "PolicyModule":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    @classmethod
    def check_models(
        cls,
        datamodule: L.LightningDataModule,
        dataset: DictConfig,
        student: nn.Module,
        teacher: nn.Module | None,
        objective: nn.Module | None = None,
    ) -> None:
        """Fail before training unless the objective is a preference objective (or SFT), the policy is
        a causal LM, and every token id of the data is inside the policy's vocabulary."""
        if not isinstance(objective, PreferenceObjective | SFT):
            raise ValueError(
                f"PolicyModule trains preference objectives (kdlab.objectives DPO, IPO, TDPO, SFT), got {type(objective).__name__}; "
                "pick a method made for it (+method=dpo|ipo|fdpo|tdpo|salsa|sft)"
            )
        if not hasattr(student, "get_input_embeddings"):
            raise ValueError(f"the policy must be a Hugging Face causal LM, got {type(student).__name__}")
        datamodule.setup("fit")
        rows, needed = student.get_input_embeddings().num_embeddings, datamodule.vocab_size
        if needed > rows:
            raise ValueError(
                f"the data's tokenizer has {needed} tokens but the policy's embedding has {rows} rows: "
                "use the tokenizer the policy was trained with"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return lm_forward(self.model, input_ids, attention_mask)

    def model_outputs(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
        """`logits [2B, L, V]` of the policy, and what the objective needs of the reference:
        `ref_logits` (TDPO) or `ref_logps [2B]` (cached per split and dataset index when allowed)."""
        outputs = {"logits": self(batch["input_ids"], batch["attention_mask"])}
        if not self.objective.needs_reference:
            return outputs
        if self.objective.needs_reference_logits:
            with torch.no_grad():
                outputs["ref_logits"] = lm_forward(self.reference, batch["input_ids"], batch["attention_mask"])
            return outputs
        outputs["ref_logps"] = self.reference_logps(batch, split)
        return outputs

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        """`log π_ref(y|x)` of the stacked rows `[2B]`, from the cache when every pair of the batch is in it."""
        cache, indices = self.reference_cache[split], batch["index"].tolist()
        if self.cache_reference and all(index in cache for index in indices):
            pairs = torch.stack([cache[index] for index in indices])  # [B, 2]: chosen, rejected
            return torch.cat([pairs[:, 0], pairs[:, 1]]).to(self.device)
        logits = lm_forward(self.reference, batch["input_ids"], batch["attention_mask"])
        logps = token_logps(logits, batch["labels"])[0].sum(-1)
        if self.cache_reference:
            chosen, rejected = logps.chunk(2)
            cache.update({index: torch.stack([c, r]).cpu() for index, c, r in zip(indices, chosen, rejected)})
        return logps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logs = self.objective(self.model_outputs(batch, "train"), batch)
        self.check_finite(loss, logs)
        pairs = len(batch["index"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pairs)
        self.log_dict({f"train/{name}": value for name, value in logs.items()}, batch_size=pairs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "test")

    def _evaluate_batch(self, batch: dict[str, torch.Tensor], split: str) -> None:
        outputs = self.model_outputs(batch, split)
        if isinstance(self.objective, SFT):
            nll, _ = self.objective(outputs, batch)
            self.log(f"{split}/nll", nll, batch_size=len(batch["index"]), sync_dist=True)
            return
        pairs = self.objective.pairs(outputs, batch)
        self.panels[split].update(pairs)
        self.log(f"{split}/loss", pairs.losses.mean(), batch_size=len(batch["index"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, split: str) -> None:
        values: dict[str, torch.Tensor | float] = {}
        if not isinstance(self.objective, SFT):
            values |= self.panels[split].compute()
            self.panels[split].reset()
        if self.samples > 0 and not self.trainer.sanity_checking:
            values |= self._record_samples(split)
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, sync_dist=True, prog_bar=split == "val")

    def on_fit_start(self) -> None:
        self.model.train()  # `from_pretrained` returns models in eval mode

    def on_train_start(self) -> None:
        """Step 0: the sample metrics of the policy before any update (it is its reference), logged as `val/*`."""
        if self.samples > 0 and self.global_step == 0:
            values = {f"val/{name}": float(value) for name, value in self._record_samples("val").items()}
            for logger in self.loggers:
                logger.log_metrics(values, step=0)

    def _record_samples(self, split: str) -> dict[str, torch.Tensor | float]:
        values = self.sample_metrics(split)
        self.sample_history.append({"split": split, "step": self.global_step} | {name: float(value) for name, value in values.items()})
        return values

    @torch.no_grad()
    def sample_metrics(self, split: str) -> dict[str, torch.Tensor | float]:
        """Draw `samples` responses from the policy (ancestral sampling at T=1, a fixed seed per
        evaluation so that curves compare like with like) and measure them; see the class docstring."""
        datamodule = self.trainer.datamodule
        prompts = {name: value.to(self.device) for name, value in datamodule.eval_prompts(split, self.samples).items()}
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            sequences = sample_responses(self.model, prompts["input_ids"], prompts["attention_mask"], self.max_new_tokens,
                                         eos_token_id=datamodule.eos_token_id, pad_token_id=datamodule.pad_token_id)
        self.model.train(was_training)
        policy_logps, mask = token_logps(self(sequences["input_ids"], sequences["attention_mask"]), sequences["labels"])
        responses = [row[row_mask].tolist() for row, row_mask in zip(sequences["labels"][:, 1:], mask)]
        if self.reference is not None:
            ref_logits = lm_forward(self.reference, sequences["input_ids"], sequences["attention_mask"])
            ref_logps = token_logps(ref_logits, sequences["labels"])[0]
            values = sample_metrics(policy_logps, ref_logps, mask, responses)
        else:
            values = {name: value for name, value in sample_metrics(policy_logps, policy_logps, mask, responses).items()
                      if not name.startswith("kl_ref")}
        score = getattr(datamodule, "score", None)
        return values | (score(sequences["responses"]) if score is not None else {})

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and hasattr(self.model, "save_pretrained"):
            directory = Path(self.trainer.default_root_dir) / POLICY_DIR
            self.model.save_pretrained(directory)
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(directory)


def load_weights(path: str | Path, like: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint for a model shaped like `like`: a `save_pretrained`
    directory, a Lightning `.ckpt` of a `PolicyModule`, or a plain `state_dict` file."""
    path = Path(path)
    if path.is_dir():
        return type(like).from_pretrained(path).state_dict()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a Lightning checkpoint of a PolicyModule: the policy's weights
        return {name.removeprefix("model."): value for name, value in state["state_dict"].items() if name.startswith("model.")}
    return state


def soup_state_dict(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The weight-space average `θ = Σ_i w_i θ_i` of models with one architecture (SALSA's reference soup).

    Every floating tensor (parameters and buffers alike) is averaged with the weights, normalised to
    sum to 1 (uniform when None); other tensors (integer buffers) must agree across the ingredients.
    """
    if len(states) < 2:
        raise ValueError(f"a soup needs at least two checkpoints, got {len(states)}")
    weights = [1.0] * len(states) if weights is None else list(weights)
    if len(weights) != len(states) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"soup_weights needs {len(states)} non-negative weights with a positive sum, got {weights}")
    keys = set(states[0])
    if any(set(state) != keys for state in states):
        raise ValueError("the soup's checkpoints have different parameter names: they must share one architecture")
    total = sum(weights)
    soup = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            soup[name] = sum(w / total * state[name].double() for w, state in zip(weights, states)).to(first.dtype)
        elif all(torch.equal(first, state[name]) for state in states):
            soup[name] = first.clone()
        else:
            raise ValueError(f"non-floating tensor {name} differs between the soup's checkpoints")
    return soup
