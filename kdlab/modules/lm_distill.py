"""Distillation of causal language models: a frozen pretrained teacher LM guides a student LM."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from kdlab.errors import ConfigError
from kdlab.lm_teacher_outputs import TeacherOutputs, check_vocabulary, teacher_outputs
from kdlab.metrics.lm import TokenPanel, rouge_l, sequence_kl
from kdlab.models.generation import sample_responses
from kdlab.models.hf import check_fusable, check_same_vocabulary, lm_forward, lm_hidden, load_tokenizer, output_rows
from kdlab.modules.base import Batch, TrainingModule
from kdlab.modules.lm_sources import DatasetResponses, TeacherMixedResponses
from kdlab.objectives.base import Objective
from kdlab.objectives.minillm import MiniLLM
from kdlab.objectives.token_kd import TokenKD
from kdlab.tokens import scored


class LMDistillModule(TrainingModule):
    """Trains `model` (the student causal LM) on `objective(outputs, batch)` — token-level KD
    (`kdlab.objectives.token_kd.TokenKD`) or MiniLLM's policy gradient (`kdlab.objectives.minillm`) —
    against `teacher`, a pretrained causal LM used as given (frozen: eval mode, `requires_grad=False`,
    run under `torch.no_grad`, left out of checkpoints).

    Batches (`kdlab.data.text` layout): `input_ids, attention_mask, labels [B, L]` (labels `IGNORE_INDEX` on
    prompt and padding), `prompt_ids, prompt_mask [B, P]` (left-padded prompts) and `index [B]`.
    Each training step, `source` (`kdlab.modules.lm_sources`; default: the dataset's responses)
    may replace the responses by samples of the student (GKD, DistiLLM; MiniLLM's teacher-mixed ones)
    or the teacher (SeqKD).
    Logits are cut to the data tokenizer's vocabulary (a teacher whose vocabulary is padded beyond
    the tokenizer has extra rows; they are dropped, docs/methods.md §7.0). With `objective.fused` the module
    hands the objective final hidden states and LM heads instead of logits. With `teacher_top_k` = k
    (the dataset's responses only), the teacher's top-k log-probabilities of every
    training response token are read from the cache in `teacher_outputs_dir` when fitting starts (computed
    there once if missing, `kdlab.lm_teacher_outputs`), and training steps skip the teacher: the
    objective takes the divergence on the k kept tokens plus one tail bin
    (`kdlab.objectives.tail_bin`); validation and test run the teacher in full. `teacher_outputs_record`
    says what was used (k, T, fingerprints, built or read; `kdlab.run` writes it to results.json).

    Logged: `train/loss`, the objective's terms, the source's (`generated`, `sgo_threshold`); per
    validation/test epoch `<split>/loss` and `kdlab.metrics.lm.TokenPanel` on the dataset's
    responses (`nll`, `ppl`, `teacher_nll`, `teacher_ppl`, `fkl`, `rkl`, `tvd`; `oracle_*` when the
    datamodule has an `oracle`); with `sequence_samples > 0`, sequence-level KLs on that many held-out
    prompts: `proxy_fkl` = KL_seq(teacher ‖ student), `proxy_rkl` = KL_seq(student ‖ teacher) and,
    with an oracle, `golden_fkl`, `golden_rkl` (the teacher-hacking curves, docs/methods.md §7.9) and the
    teacher's own `teacher_golden_fkl` = KL_seq(oracle ‖ teacher), `teacher_golden_rkl`; at test,
    with `generation_samples > 0` and a datamodule with `references`, `test/rougeL` (ROUGE-L F1 of
    student samples at T=1 against the references), and a W&B table of samples.
    After fitting, the student is saved with `save_pretrained` (and the tokenizer) in `<run dir>/student`.
    """

    batches = "text"

    teacher_role = "pretrained"
    export_dir = "student"

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        objective: TokenKD | MiniLLM,
        optimizer: Any,
        *,
        source: DatasetResponses,
        sequence_samples: int,
        generation_samples: int,
        max_new_tokens: int,
        eval_chunk_size: int | None,
        num_classes: int | None = None,
        scheduler: Any | None = None,
        teacher_top_k: int | None = None,
        teacher_outputs_dir: str | None = None,
    ) -> None:
        if num_classes is not None:
            raise ConfigError(f"LMDistillModule distils language models; the dataset has num_classes={num_classes}: pick a text dataset")
        super().__init__(model, objective, optimizer, num_classes, scheduler)
        if getattr(objective, "needs_student_samples", False) and not isinstance(source, TeacherMixedResponses):
            raise ConfigError(f"{type(objective).__name__} trains on student samples: use "
                              "module.source._target_=kdlab.modules.lm_sources.TeacherMixedResponses (its preset's)")
        self.freeze("teacher", teacher)
        self.source = source
        self.sequence_samples, self.generation_samples, self.max_new_tokens = sequence_samples, generation_samples, max_new_tokens
        self.panels = nn.ModuleDict({split: TokenPanel(eval_chunk_size) for split in ("val", "test")})
        self.vocab_size: int | None = None
        self.total_steps = 1  # the run's optimiser steps, known when training starts (for the sources' schedules)
        self.reference_samples: dict[tuple[str, str], dict[str, Any]] = {}  # per split: fixed teacher/oracle samples, the teacher's KLs
        self.history: list[dict[str, float]] = []  # every evaluation: split, step and its metrics
        self.teacher_top_k, self.teacher_outputs_dir = teacher_top_k, teacher_outputs_dir
        self.teacher_outputs: TeacherOutputs | None = None  # the cached top-k teacher outputs, loaded when fitting starts

    # ---- set-up -------------------------------------------------------------------------------
    @classmethod
    def check_models(
        cls, datamodule: L.LightningDataModule, num_classes: int | None, student: nn.Module, teacher: nn.Module | None, objective: Objective
    ) -> None:
        """Fail before training unless the objective is token-level KD, both models are causal LMs
        with an output for every token of the data's tokenizer, and the tokenizers saved with the
        models (when they have one) equal the data's — the first differing token ids are named."""
        if not isinstance(objective, TokenKD | MiniLLM):
            raise ConfigError(f"LMDistillModule trains token-level objectives (TokenKD) and MiniLLM, got {type(objective).__name__}: "
                              "pick +method=lmkd|gkd|distillm|seqkd|minillm")
        models = {"student": student, "teacher": teacher}
        for role, model in models.items():
            if model is None or not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
                raise ValueError(f"the {role} must be a Hugging Face causal LM, got {type(model).__name__}")
            if objective.fused:
                check_fusable(model, role)
        if not hasattr(type(datamodule), "vocab_size"):
            raise ValueError(f"LMDistillModule needs text data with a tokenizer (dataset=dolly|instructions_jsonl|oracle), got {type(datamodule).__name__}")
        datamodule.setup("fit")
        vocab = datamodule.vocab_size
        for role, model in models.items():
            if output_rows(model) < vocab:
                raise ValueError(f"the data's tokenizer has {vocab} tokens but the {role} predicts {output_rows(model)}: "
                                 "use the tokenizer the models were trained with")
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            saved = {role: _saved_tokenizer(model) for role, model in models.items()}
            check_same_vocabulary({"data": tokenizer} | {role: t for role, t in saved.items() if t is not None})

    def setup(self, stage: str) -> None:
        self.vocab_size = self.trainer.datamodule.vocab_size
        if self.teacher_top_k is not None:
            check_vocabulary(self.teacher_top_k, self.vocab_size)  # before any teacher pass
        super().setup(stage)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.teacher_top_k is not None and self.teacher_outputs is None:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.teacher_outputs = teacher_outputs(self.teacher, self.trainer.datamodule, self.teacher_top_k,
                                                       self.objective.temperature, self.teacher_outputs_dir, self.device)

    @property
    def teacher_outputs_record(self) -> dict[str, Any] | None:
        """What the training steps used instead of the teacher (None: the teacher itself)."""
        return self.teacher_outputs.record if self.teacher_outputs is not None else None

    def on_train_start(self) -> None:
        self.total_steps = max(self.trainer.estimated_stepping_batches, 1)

    # ---- forward passes ------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return lm_forward(self.model, input_ids, attention_mask)[..., : self.vocab_size]

    def model_outputs(self, batch: Batch, split: str) -> dict[str, Any]:
        """Logits `[B, L, V]` of student and teacher, or (fused objective) hidden states and heads; in
        training with the teacher-output cache, the student's logits and the batch's cached teacher rows."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if split == "train" and self.teacher_outputs is not None:
            return {"logits": self(ids, mask)} | self.teacher_outputs.lookup(batch["index"], batch["labels"])
        if self.objective.fused:
            with torch.no_grad():
                teacher_hidden = lm_hidden(self.teacher, ids, mask)
            return {"hidden": lm_hidden(self.model, ids, mask), "head": self._head(self.model),
                    "teacher_hidden": teacher_hidden, "teacher_head": self._head(self.teacher)}
        with torch.no_grad():
            teacher_logits = lm_forward(self.teacher, ids, mask)[..., : self.vocab_size]
        return {"logits": self(ids, mask), "teacher_logits": teacher_logits}

    def _head(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = model.get_output_embeddings()
        bias = head.bias[: self.vocab_size] if head.bias is not None else None
        return head.weight[: self.vocab_size], bias

    @torch.no_grad()
    def generate(
        self, role: str, prompts: dict[str, torch.Tensor], temperature: float, max_new_tokens: int, teacher_weight: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Sample one response per prompt (`prompt_ids, prompt_mask`) from the "student", "teacher" or
        "oracle" (the datamodule's) — the student's from its per-token mixture with the teacher when
        `teacher_weight` > 0; returns `input_ids, attention_mask, labels` and `sampling_logps`."""
        datamodule = self.trainer.datamodule
        model = self.model if role == "student" else self.teacher if role == "teacher" else datamodule.oracle
        was_training = model.training
        model.eval()
        sampled = sample_responses(model, prompts["prompt_ids"], prompts["prompt_mask"], max_new_tokens,
                                   eos_token_id=datamodule.eos_token_id, pad_token_id=datamodule.pad_token_id, temperature=temperature,
                                   mix=(self.teacher, teacher_weight) if teacher_weight > 0 else None,
                                   vocab_size=self.vocab_size if teacher_weight > 0 else None)
        model.train(was_training)
        return {key: sampled[key] for key in ("input_ids", "attention_mask", "labels", "sampling_logps")}

    # ---- training ------------------------------------------------------------------------------
    def training_batch(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """The source's batch: the dataset's, or responses sampled from the student or the teacher."""
        return self.source.training_batch(batch, self.generate, min(self.global_step / self.total_steps, 1.0))

    def batch_size(self, batch: Batch) -> int:
        return len(batch["input_ids"])

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, batch: Batch, split: str) -> None:
        outputs = self.model_outputs(batch, split)
        loss, _ = self.objective(outputs, batch)
        self.log(f"{split}/loss", loss, batch_size=len(batch["input_ids"]), sync_dist=True)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = batch["labels"][:, 1:]
        scored_tokens = scored(labels)
        logits = outputs.get("logits", None)
        if logits is None:  # fused objective: the panel needs logits (no gradient here)
            logits, outputs["teacher_logits"] = self(ids, mask), lm_forward(self.teacher, ids, mask)[..., : self.vocab_size]
        oracle = getattr(self.trainer.datamodule, "oracle", None)
        oracle_logits = lm_forward(oracle, ids, mask)[:, :-1][scored_tokens][..., : self.vocab_size] if oracle is not None else None
        self.panels[split].update(logits[:, :-1][scored_tokens], outputs["teacher_logits"][:, :-1][scored_tokens], labels[scored_tokens],
                                  oracle_logits)

    def epoch_metrics(self, split: str) -> dict[str, float]:
        values = {name: float(value) for name, value in self.panels[split].compute().items()}
        self.panels[split].reset()
        if self.trainer.sanity_checking:
            return {}
        if split == "val" and "nll" in values:
            self.source.observe_validation(values["nll"])
        if self.sequence_samples > 0:
            values |= self.sequence_metrics(split)
        if split == "test" and self.generation_samples > 0 and hasattr(self.trainer.datamodule, "references"):
            values |= self.generation_metrics(split)
        self.history.append({"split": split, "step": self.global_step} | values)
        return values

    def _samples(self, role: str, split: str, seed: int) -> dict[str, torch.Tensor]:
        """`sequence_samples` responses of `role` to the split's first prompts, at T=1, seeded."""
        prompts = {k: v.to(self.device) for k, v in self.trainer.datamodule.eval_prompts(split, self.sequence_samples).items()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self.generate(role, prompts, 1.0, self.max_new_tokens)

    @torch.no_grad()
    def sequence_metrics(self, split: str) -> dict[str, float]:
        """Sequence-level KL of the student to the teacher (proxy) and to the oracle (golden), both
        directions, and (constant) the teacher's own KL to the oracle, `teacher_golden_fkl/rkl`.

        Teacher and oracle samples are drawn once per split (fixed seed) and reused, so the curves move
        only with the student; student samples are redrawn at each evaluation with the same seed."""
        oracle = getattr(self.trainer.datamodule, "oracle", None)
        models = {"teacher": self.teacher} | ({"oracle": oracle} if oracle is not None else {})
        for role in models:
            if (role, split) not in self.reference_samples:
                self.reference_samples[(role, split)] = self._samples(role, split, seed=0)
        samples = {role: self.reference_samples[(role, split)] for role in models} | {"student": self._samples("student", split, seed=1)}
        models["student"] = self.model

        def kl(a: str, b: str) -> float:  # KL_seq(a ‖ b) on samples of a
            return float(sequence_kl(samples[a], models[a], models[b], self.vocab_size))

        values = {"proxy_fkl": kl("teacher", "student"), "proxy_rkl": kl("student", "teacher")}
        if oracle is not None:
            if (split, "teacher_golden") not in self.reference_samples:
                self.reference_samples[(split, "teacher_golden")] = {"fkl": kl("oracle", "teacher"), "rkl": kl("teacher", "oracle")}
            constants = self.reference_samples[(split, "teacher_golden")]
            values |= {"golden_fkl": kl("oracle", "student"), "golden_rkl": kl("student", "oracle"),
                       "teacher_golden_fkl": constants["fkl"], "teacher_golden_rkl": constants["rkl"]}
        return values

    @torch.no_grad()
    def generation_metrics(self, split: str) -> dict[str, float]:
        """ROUGE-L of student samples against the references, and the samples as a W&B table."""
        datamodule = self.trainer.datamodule
        prompts = datamodule.eval_prompts(split, self.generation_samples)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            sampled = self.generate("student", {k: v.to(self.device) for k, v in prompts.items()}, 1.0, self.max_new_tokens)
        responses = [datamodule.decode(row[scored(row)].tolist()) for row in sampled["labels"]]
        references = datamodule.references(split, self.generation_samples)
        scores = [rouge_l(response, reference) for response, reference in zip(responses, references)]
        table = [[datamodule.decode(p[m.bool()].tolist()), r, ref, s] for p, m, r, ref, s in
                 zip(prompts["prompt_ids"], prompts["prompt_mask"], responses, references, scores)]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=f"{split}/samples", columns=["prompt", "student", "reference", "rougeL"], data=table)
        return {"rougeL": sum(scores) / len(scores)}


def _saved_tokenizer(model: nn.Module):
    """The tokenizer saved with a pretrained model, or None for a model built in code or saved without one."""
    path = getattr(model, "name_or_path", "")
    if not path:
        return None
    try:
        return load_tokenizer(path)
    except (OSError, ValueError):
        return None
