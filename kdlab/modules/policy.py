"""Preference alignment: a trainable policy against a frozen reference (DPO, IPO, f-DPO, TDPO, SALSA, SFT)."""

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from kdlab.errors import ConfigError, DataError
from kdlab.metrics.alignment import PreferencePanel, sample_metrics
from kdlab.models.generation import sample_responses
from kdlab.models.hf import lm_forward, lm_forward_hidden, without_dropout
from kdlab.modules.base import Batch, TrainingModule
from kdlab.objectives.base import Objective
from kdlab.objectives.preference import SFT, PreferenceObjective
from kdlab.rewards import Responses, Reward
from kdlab.rewards import score as score_responses
from kdlab.tokens import token_logps


class PolicyModule(TrainingModule):
    """Trains `model` (the policy, a causal LM returning `.logits`) with a preference objective.

    The reference π_ref is frozen (eval mode, `requires_grad=False`, never given to the optimiser,
    run under `torch.no_grad`): a copy of the policy's initial weights, or — SALSA (Chegini et al.
    2024, arXiv 2411.01798) — the weight-space average ("soup") of the checkpoints in
    `reference_soup` with `soup_weights` (uniform by default). The SFT objective needs no reference.
    Unless the objective needs the reference's full logits (TDPO), the reference's sequence
    log-probs are cached by dataset index and split, so each pair meets the reference once.

    Batches (see `kdlab.data.preference`): `input_ids`, `attention_mask`, `labels` `[2B, L]` (B chosen
    rows, then B rejected rows; labels `IGNORE_INDEX` on prompt and padding) and `index [B]`.

    Logged: `train/loss` and the objective's terms; per validation/test epoch the pair metrics of
    `PreferencePanel` (`<split>/accuracy`, `margin`, `reward_chosen`, `reward_rejected`, `ece`) and
    `<split>/loss`, and, on `samples` responses drawn from the policy for the datamodule's evaluation
    prompts (`eval_prompts(split, n)`: `prompt_ids, prompt_mask`), `<split>/kl_ref`, `kl_ref_k3`, `entropy`, `distinct_1`,
    `distinct_2`, `length`, plus what the datamodule's `score(responses)` returns when it has one
    (the known-reward task: `reward`, `modes`) and, with a `reward` (`kdlab.rewards`, `reward=NAME`),
    `<split>/reward`, its mean over the samples (it replaces the datamodule's). SFT logs `<split>/nll`
    and the sample metrics but no KL.
    The sample metrics are also taken at step 0 (the reference itself, logged as `val/*` at step 0) and
    kept in `sample_history`, the trajectory that `kdlab.synthetic.plots.TradeoffPlot` draws.
    After fitting, the policy is saved with `save_pretrained` in `<run dir>/policy` (the next stage's
    `model.student.name_or_path`).
    """

    batches = "preferences"

    export_dir = "policy"

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        reference_soup: Sequence[str] | None,
        soup_weights: Sequence[float] | None,
        cache_reference: bool,
        samples: int,
        max_new_tokens: int,
        disable_dropout: bool,
        reward: Reward | None = None,
        num_classes: int | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(model, objective, optimizer, num_classes, scheduler)
        if disable_dropout:  # TRL's DPO default: log-ratios of policy and reference from the same deterministic net
            without_dropout(model)
        self.cache_reference = cache_reference and not objective.needs_reference_logits
        self.samples, self.max_new_tokens, self.reward = samples, max_new_tokens, reward
        self.reference = None
        if objective.needs_reference:
            reference = copy.deepcopy(model)
            if reference_soup:
                reference.load_state_dict(soup_state_dict([load_weights(path, model) for path in reference_soup], soup_weights))
            self.freeze("reference", reference)
        elif reference_soup:
            raise ConfigError(f"{type(objective).__name__} uses no reference model, but module.reference_soup was given")
        self.reference_cache: dict[str, dict[int, torch.Tensor]] = {"train": {}, "val": {}, "test": {}}
        self.panels = nn.ModuleDict({split: PreferencePanel() for split in ("val", "test")})
        self.sample_history: list[dict[str, Any]] = []  # every sample evaluation: split, step, metrics

    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, num_classes: int | None, student: nn.Module, teacher: nn.Module | None, objective: Objective
    ) -> None:
        """Fail before training unless the objective is a preference objective (or SFT), the policy is
        a causal LM, and every token id of the data is inside the policy's vocabulary."""
        if not isinstance(objective, PreferenceObjective | SFT):
            raise ConfigError(
                f"PolicyModule trains preference objectives (DPO, f-DPO, IPO, TDPO, SFT), got {type(objective).__name__}; "
                "pick a method made for it (+method=dpo|ipo|fdpo|tdpo|salsa|sft)"
            )
        if not hasattr(student, "get_input_embeddings"):
            raise ConfigError(f"the policy must be a Hugging Face causal LM, got {type(student).__name__}")
        datamodule.setup("fit")
        rows, needed = student.get_input_embeddings().num_embeddings, datamodule.vocab_size
        if needed > rows:
            raise ConfigError(
                f"the data's tokenizer has {needed} tokens but the policy's embedding has {rows} rows: "
                "use the tokenizer the policy was trained with"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return lm_forward(self.model, input_ids, attention_mask)

    def model_outputs(self, batch: Batch, split: str) -> dict[str, torch.Tensor]:
        """`logits [2B, L, V]` of the policy, and what the objective needs of the reference:
        `ref_logits` (TDPO, SparsePO; with `ref_hidden`, its hidden states, for SparsePO's masks) or
        `ref_logps [2B]` (cached per split and dataset index when allowed)."""
        outputs = {"logits": self(batch["input_ids"], batch["attention_mask"])}
        if not self.objective.needs_reference:
            return outputs
        if self.objective.needs_reference_logits:
            with torch.no_grad():
                if getattr(self.objective, "needs_reference_hidden", False):  # SparsePO's masks read the reference's states
                    outputs["ref_logits"], outputs["ref_hidden"] = lm_forward_hidden(self.reference, batch["input_ids"], batch["attention_mask"])
                else:
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

    def batch_size(self, batch: Batch) -> int:
        return len(batch["index"])  # pairs

    def evaluate(self, batch: Batch, split: str) -> None:
        outputs = self.model_outputs(batch, split)
        if isinstance(self.objective, SFT):
            nll, _ = self.objective(outputs, batch)
            self.log(f"{split}/nll", nll, batch_size=len(batch["index"]), sync_dist=True)
            return
        pairs = self.objective.pairs(outputs, batch)
        self.panels[split].update(pairs)
        self.log(f"{split}/loss", pairs.losses.mean(), batch_size=len(batch["index"]), sync_dist=True)

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor | float]:
        values: dict[str, torch.Tensor | float] = {}
        if not isinstance(self.objective, SFT):
            values |= self.panels[split].compute()
            self.panels[split].reset()
        if self.samples > 0 and not self.trainer.sanity_checking:
            values |= self._record_samples(split)
        return values

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
            sequences = sample_responses(self.model, prompts["prompt_ids"], prompts["prompt_mask"], self.max_new_tokens,
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
        if score is not None:
            values |= score(sequences["responses"])
        if self.reward is not None:
            responses = Responses(prompts["prompt_ids"], prompts["prompt_mask"], sequences["responses"], sequences["response_mask"],
                                  getattr(datamodule, "decode", None))
            values["reward"] = score_responses(self.reward, responses).mean()
        return values


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
        raise ConfigError(f"a soup (module.reference_soup) needs at least two checkpoints, got {len(states)}")
    weights = [1.0] * len(states) if weights is None else list(weights)
    if len(weights) != len(states) or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(f"module.soup_weights needs {len(states)} non-negative weights with a positive sum, got {weights}")
    keys = set(states[0])
    if any(set(state) != keys for state in states):
        raise DataError("the soup's checkpoints have different parameter names: they must share one architecture")
    total = sum(weights)
    soup = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            soup[name] = sum(w / total * state[name].double() for w, state in zip(weights, states)).to(first.dtype)
        elif all(torch.equal(first, state[name]) for state in states):
            soup[name] = first.clone()
        else:
            raise DataError(f"non-floating tensor {name} differs between the soup's checkpoints")
    return soup
