"""The on-policy regime: prompts → samples → rewards → loss, one mechanism for f-DPG, GRPO, DPH-RL and D2O."""

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.metrics.alignment import distinct_n, sample_metrics
from kdlab.metrics.verifiable import mean_pass_at_k
from kdlab.models.generation import sample_responses
from kdlab.models.hf import lm_forward, without_dropout
from kdlab.modules.base import Batch, TrainingModule
from kdlab.objectives.base import Objective
from kdlab.objectives.on_policy import SAMPLERS, OnPolicyObjective, Rollouts, batch_prompts
from kdlab.rewards import Responses, Reward, score
from kdlab.tokens import scored, token_logps


class OnPolicyModule(TrainingModule):
    """Trains `model` (the policy, a Hugging Face causal LM) on its own (or a proposal's, or the
    reference's) samples, scored by `reward` (`kdlab.rewards`), with an `OnPolicyObjective`.

    Each training step takes a batch of prompts (`prompt_ids, prompt_mask [B, P]`, `index [B]`; or any
    batch the objective reads its prompts from, e.g. preference pairs for D2O), draws
    `samples_per_prompt` responses per prompt (at most `max_new_tokens`, temperature 1, no top-k/top-p)
    from the objective's `sampler` with the shared KV-cached sampler
    (`kdlab.models.generation.sample_responses`, under `torch.inference_mode`), lets the objective add
    rows (`extend`), scores the sampled responses (`rewards`), computes the reference's token log-probs
    when the objective needs them, and takes the loss on that rollout batch (`kdlab.objectives.on_policy`).
    The reference π_ref is a frozen copy of the initial policy (eval mode, no gradient, never
    optimised, left out of checkpoints); an objective with an offline proposal gets a second copy that
    it refreshes with the policy's weights (`refresh_proposal`), kept in checkpoints. Before the
    first step the objective's `prepare_rollouts` may sample (λ of f-DPG's target, DPH-RL's rehearsal set).

    Logged: `train/loss`, the objective's terms, `train/reward` (mean reward of the step's samples),
    `train/length`; per validation/test epoch, on `eval_samples_per_prompt` responses of the policy
    to each prompt of the split (T = 1, a fixed seed per evaluation): `<split>/reward`, `kl_ref` and
    `kl_ref_k3` (sequence KL(π‖π_ref), k1 and k3), `entropy`, `distinct_1`, `distinct_2`, `unique`,
    `length`; with a verifiable reward `pass@k` for k = 1, 2, 4, ... n (unbiased estimator, n =
    `eval_samples_per_prompt`); and what the datamodule's `exact_metrics(policy, reference, target)`
    returns (the synthetic tasks: exact values by enumeration). The step-0 evaluation (the policy
    before any update) is logged as `val/*` at step 0; every evaluation is kept in `sample_history`
    (the trajectory `kdlab.synthetic.plots.TradeoffPlot` draws). After fitting the policy is saved
    with `save_pretrained` in `<run dir>/policy`.
    """

    export_dir = "policy"

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        reward: Reward | None,
        samples_per_prompt: int,
        max_new_tokens: int,
        eval_samples_per_prompt: int,
        disable_dropout: bool = True,
        num_classes: int | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(model, objective, optimizer, num_classes, scheduler)
        if reward is None:
            raise ConfigError("the on-policy methods score their samples: give a reward (reward=vader, or an experiment's own)")
        if samples_per_prompt < 1 or max_new_tokens < 1 or eval_samples_per_prompt < 1:
            raise ConfigError("module.samples_per_prompt, module.max_new_tokens and module.eval_samples_per_prompt must be >= 1, "
                              f"got {samples_per_prompt}, {max_new_tokens}, {eval_samples_per_prompt}")
        if objective.sampler not in SAMPLERS:
            raise ConfigError(f"{type(objective).__name__}.sampler must be one of {SAMPLERS}, got {objective.sampler!r}")
        if disable_dropout:
            without_dropout(model)
        self.reward = reward
        self.samples_per_prompt, self.max_new_tokens, self.eval_samples_per_prompt = samples_per_prompt, max_new_tokens, eval_samples_per_prompt
        self.freeze("reference", copy.deepcopy(model))
        self.proposal = copy.deepcopy(model).requires_grad_(False).eval() if objective.sampler == "proposal" else None
        self.proposal_updates = 0
        self.evaluations: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        self.sample_history: list[dict[str, Any]] = []

    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, num_classes: int | None, student: nn.Module, teacher: nn.Module | None, objective: Objective
    ) -> None:
        """Fail before training unless the objective is an on-policy objective, the policy a causal LM
        whose vocabulary covers the data's, and the data serves prompts."""
        if not isinstance(objective, OnPolicyObjective):
            raise ConfigError(f"OnPolicyModule trains on-policy objectives (f-DPG, GRPO, DPH-RL, D2O), got {type(objective).__name__}; "
                              "pick +method=fdpg|grpo|dphrl|d2o")
        if not hasattr(student, "get_input_embeddings"):
            raise ConfigError(f"the policy must be a Hugging Face causal LM, got {type(student).__name__}")
        datamodule.setup("fit")
        rows, needed = student.get_input_embeddings().num_embeddings, datamodule.vocab_size
        if needed > rows:
            raise ConfigError(f"the data's tokenizer has {needed} tokens but the policy's embedding has {rows} rows: "
                              "use the tokenizer the policy was trained with")

    def setup(self, stage: str) -> None:
        if self.reward.reads_text and getattr(self.trainer.datamodule, "decode", None) is None:
            raise ConfigError(f"the reward {type(self.reward).__name__} scores text, but dataset {type(self.trainer.datamodule).__name__} "
                              "has no tokenizer to decode responses with: pick a token-level reward or a text dataset")
        super().setup(stage)

    def train(self, mode: bool = True) -> "OnPolicyModule":
        super().train(mode)
        if self.proposal is not None:
            self.proposal.eval()
        return self

    # ---- the sampling service (also what objectives use before training) --------------------------
    def train_prompts(self) -> dict[str, torch.Tensor]:
        prompts = getattr(self.trainer.datamodule, "prompts", None)
        if prompts is None:
            raise ConfigError(f"{type(self.objective).__name__} samples every training prompt before training; "
                              f"dataset {type(self.trainer.datamodule).__name__} does not list its prompts (prompts(split))")
        return {key: value.to(self.device) for key, value in prompts("train").items()}

    @torch.no_grad()
    def rollouts(self, sampler: str, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, samples_per_prompt: int) -> Rollouts:
        """`samples_per_prompt` scored responses to each prompt from "policy", "reference" or "proposal"
        (the layout of `kdlab.objectives.on_policy`; the responses of a prompt are consecutive)."""
        model = {"policy": self.model, "reference": self.reference, "proposal": self.proposal}[sampler]
        datamodule = self.trainer.datamodule
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(samples_per_prompt, 0), prompt_mask.repeat_interleave(samples_per_prompt, 0)
        group = torch.arange(len(prompt_ids) // samples_per_prompt, device=self.device).repeat_interleave(samples_per_prompt)
        if not len(prompt_ids):
            width = prompt_ids.shape[1] + 1
            empty = prompt_ids.new_zeros((0, width))
            return {"input_ids": empty, "attention_mask": empty, "labels": empty, "sampling_logps": empty[:, 1:].float(),
                    "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "rewards": group.float(), "group": group, "kind": group}
        was_training = model.training
        model.eval()
        sampled = sample_responses(model, prompt_ids, prompt_mask, self.max_new_tokens,
                                   eos_token_id=datamodule.eos_token_id, pad_token_id=datamodule.pad_token_id)
        model.train(was_training)
        responses = Responses(prompt_ids, prompt_mask, sampled["responses"], sampled["response_mask"], getattr(datamodule, "decode", None))
        return {key: sampled[key] for key in ("input_ids", "attention_mask", "labels", "sampling_logps")} | {
            "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "rewards": score(self.reward, responses).to(self.device),
            "group": group, "kind": torch.zeros_like(group)}

    @torch.no_grad()
    def reference_logps(self, rollouts: Rollouts) -> torch.Tensor:
        """log π_ref of every scored token of the rollouts, `[N, L-1]` (0 elsewhere)."""
        return token_logps(lm_forward(self.reference, rollouts["input_ids"], rollouts["attention_mask"]), rollouts["labels"])[0]

    # ---- training ------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """The objective's pre-sampling stage, then the step-0 evaluation (the initial policy), as `val/*` at step 0."""
        self.objective.prepare_rollouts(self)
        if self.global_step == 0:
            for batch in self.trainer.datamodule.val_dataloader():
                self.evaluate({key: value.to(self.device) for key, value in batch.items()}, "val")
            values = {f"val/{name}": float(value) for name, value in self.epoch_metrics("val").items()}
            for logger in self.loggers:
                logger.log_metrics(values, step=0)

    def training_batch(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """The rollout batch of the step (see the class docstring), and its mean reward and length."""
        prompts = self.objective.prompts(batch)
        rollouts = self.rollouts(self.objective.sampler, prompts["prompt_ids"], prompts["prompt_mask"], self.samples_per_prompt)
        sampled = rollouts["rewards"]
        lengths = scored(rollouts["labels"]).sum(-1).float()
        rollouts = self.objective.extend(rollouts, batch)
        if self.objective.needs_reference:
            rollouts["ref_logps"] = self.reference_logps(rollouts)
        logs = {"reward": sampled.mean().item(), "length": lengths.mean().item()} if len(sampled) else {}
        return rollouts, logs

    def model_outputs(self, batch: Batch, split: str) -> dict[str, torch.Tensor]:
        return {"logits": lm_forward(self.model, batch["input_ids"], batch["attention_mask"])}

    def batch_size(self, batch: Batch) -> int:
        return len(batch["input_ids"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.objective.refresh_proposal():
            self.proposal.load_state_dict(self.model.state_dict())
            self.proposal_updates += 1
        if self.proposal is not None:
            self.log("train/proposal_updates", float(self.proposal_updates))

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, batch: Batch, split: str) -> None:
        """Sample `eval_samples_per_prompt` responses of the policy to each prompt of the batch (seeded by
        the batch's position in the evaluation) and keep what the epoch metrics need."""
        n = self.eval_samples_per_prompt
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(len(self.evaluations[split]))
            prompts = batch_prompts(batch)
            rollouts = self.rollouts("policy", prompts["prompt_ids"], prompts["prompt_mask"], n)
        mask = scored(rollouts["labels"][:, 1:])
        responses = [row[1:][keep].tolist() for row, keep in zip(rollouts["labels"], mask)]
        values = sample_metrics(rollouts["sampling_logps"], self.reference_logps(rollouts), mask, responses)  # T = 1: the policy's log-probs
        result = {"count": len(responses), "responses": responses, "values": values, "rewards": rollouts["rewards"].cpu()}
        if self.reward.verifiable:
            result["correct"] = rollouts["rewards"].view(-1, n).sum(-1).long().tolist()
        self.evaluations[split].append(result)

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor | float]:
        results, self.evaluations[split] = self.evaluations[split], []
        if self.trainer.sanity_checking or not results:
            return {}
        total = sum(result["count"] for result in results)
        values = {name: sum(float(r["values"][name]) * r["count"] for r in results) / total for name in results[0]["values"]}
        responses = [response for result in results for response in result["responses"]]
        values |= {"distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
                   "unique": len({tuple(response) for response in responses}) / len(responses),
                   "reward": torch.cat([result["rewards"] for result in results]).mean().item()}
        if self.reward.verifiable:
            values |= mean_pass_at_k([c for result in results for c in result["correct"]], self.eval_samples_per_prompt)
        exact = getattr(self.trainer.datamodule, "exact_metrics", None)
        if exact is not None:
            values |= exact(self.model, self.reference, getattr(self.objective, "target_log_scores", None))
        self.sample_history.append({"split": split, "step": self.global_step} | values)
        return values

