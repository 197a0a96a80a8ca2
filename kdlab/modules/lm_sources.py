"""Where the responses of an LM distillation step come from (docs/methods.md §7.0 `data_source`).

A source turns the dataset batch of a training step into the batch the loss is taken on,
`training_batch(batch, generate, progress) -> (batch, logs)`, given `generate(role, prompts,
temperature, max_new_tokens, teacher_weight=0.0)` (samples of the "student" or "teacher" for the
batch's prompts, without gradient; with `teacher_weight` α > 0, the student's samples are drawn from
its per-token mixture with the teacher) and the fraction of training done, `progress` in [0, 1]:

- `DatasetResponses`: the dataset's responses (off-policy, supervised KD);
- `SampledResponses(generator, probability)`: with probability λ the responses are sampled from the
  student (GKD's on-policy mixing, Agarwal et al. 2024: λ=0.5, temperature 0.9) or from the teacher
  (SeqKD, λ=1), without gradient, for the batch's prompts; otherwise the dataset's;
- `AdaptiveStudentResponses`: DistiLLM's adaptive student-generated-output schedule with a replay
  buffer (Ko et al. 2024, `finetune.py` of jongwooko/distillm; docs/methods.md §7.2);
- `TeacherMixedResponses(teacher_weight)`: every step, responses of the student drawn token by token
  from the mixture `(1 − α) q_θ + α p` (MiniLLM's teacher-mixed sampling, docs/methods.md §7.11),
  with each token's log-probability under the mixture (`sampling_logps`) for the importance weights.

Generated batches have the layout of `kdlab.models.generation.sample_responses` (left-padded
prompt + response, labels `IGNORE_INDEX` off the response); the loss then teacher-forces both models on them.
Every constructor argument is required: the presets (conf/method/{gkd,seqkd,distillm}.yaml) hold the defaults.
"""

import random
from collections.abc import Callable

import torch
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.tokens import IGNORE_INDEX

Batch = dict[str, Tensor]
Generate = Callable[..., Batch]  # (role, prompts, temperature, max_new_tokens, teacher_weight=0.0) -> batch
GENERATORS = ("student", "teacher")
REPLAY_RATIOS = ("decreasing", "constant", "increasing")


class DatasetResponses:
    """The dataset batch, unchanged."""

    def training_batch(self, batch: Batch, generate: Generate, progress: float) -> tuple[Batch, dict[str, float]]:
        return batch, {}

    def observe_validation(self, nll: float) -> None:
        """Sources that adapt to the student's validation NLL override this."""


class SampledResponses(DatasetResponses):
    """With probability `probability` (λ), responses sampled from `generator` ("student" or "teacher")
    at `temperature`, at most `max_new_tokens`; else the dataset's. Logs `generated` (1 or 0)."""

    def __init__(self, *, generator: str, probability: float, temperature: float, max_new_tokens: int) -> None:
        if generator not in GENERATORS:
            raise ConfigError(f"module.source.generator must be one of {GENERATORS}, got {generator!r}")
        if not 0.0 <= probability <= 1.0 or temperature <= 0 or max_new_tokens < 1:
            raise ConfigError("module.source needs 0 <= probability <= 1, temperature > 0, max_new_tokens >= 1; "
                              f"got {probability}, {temperature}, {max_new_tokens}")
        self.generator, self.probability, self.temperature, self.max_new_tokens = generator, probability, temperature, max_new_tokens

    def training_batch(self, batch: Batch, generate: Generate, progress: float) -> tuple[Batch, dict[str, float]]:
        if torch.rand(()).item() >= self.probability:
            return batch, {"generated": 0.0}
        return generate(self.generator, batch, self.temperature, self.max_new_tokens), {"generated": 1.0}


class AdaptiveStudentResponses(DatasetResponses):
    """DistiLLM's adaptive off-policy schedule of student-generated outputs (SGO).

    A threshold φ starts at `init_threshold`; after each validation, when the student's validation
    NLL has risen by at least `loss_eps` over the last reference value, φ ← min(φ + 0.1, 1) and the
    reference value is updated. Each step draws r ~ U(0, 1) and sets s = φ·(1 − step/total)
    (`replay_ratio="decreasing"`; "constant": φ/2; "increasing": φ·step/total):
    if r < s, or r < φ while the replay buffer holds fewer than `capacity` sequences, fresh student
    samples (temperature 1, no top-k/top-p) are pushed into the FIFO buffer and trained on; else if
    r < φ, a batch drawn from the buffer is trained on; else the dataset batch.

    Scoping (documented deviations): DistiLLM measures the reference NLL once before training; here
    the first validation sets it. The buffer is not saved in checkpoints (a resumed run refills it).
    Logs `generated` (1 fresh samples, 0.5 replayed, 0 dataset) and `sgo_threshold` (φ).
    """

    def __init__(
        self, *, init_threshold: float, loss_eps: float, capacity: int, replay_ratio: str, temperature: float, max_new_tokens: int
    ) -> None:
        if replay_ratio not in REPLAY_RATIOS:
            raise ConfigError(f"module.source.replay_ratio must be one of {REPLAY_RATIOS}, got {replay_ratio!r}")
        if not 0.0 <= init_threshold <= 1.0 or capacity < 1:
            raise ConfigError(f"module.source needs 0 <= init_threshold <= 1 and capacity >= 1, got {init_threshold}, {capacity}")
        self.threshold, self.loss_eps, self.capacity, self.replay_ratio = init_threshold, loss_eps, capacity, replay_ratio
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.reference_nll: float | None = None
        self.buffer: list[Batch] = []  # one entry per sequence, on the CPU, unpadded

    def observe_validation(self, nll: float) -> None:
        if self.reference_nll is None:
            self.reference_nll = nll
        elif nll >= self.reference_nll + self.loss_eps:
            self.threshold = min(self.threshold + 0.1, 1.0)
            self.reference_nll = nll

    def sampling_threshold(self, progress: float) -> float:
        """s for training progress step/total in [0, 1]."""
        return self.threshold * {"decreasing": 1 - progress, "constant": 0.5, "increasing": progress}[self.replay_ratio]

    def training_batch(self, batch: Batch, generate: Generate, progress: float) -> tuple[Batch, dict[str, float]]:
        r = torch.rand(()).item()
        logs = {"sgo_threshold": self.threshold}
        if r < self.sampling_threshold(progress) or (r < self.threshold and len(self.buffer) < self.capacity):
            generated = generate("student", batch, self.temperature, self.max_new_tokens)
            self.push(generated)
            return generated, logs | {"generated": 1.0}
        if r < self.threshold:
            device = batch["input_ids"].device
            return {key: value.to(device) for key, value in self.sample(len(batch["input_ids"])).items()}, logs | {"generated": 0.5}
        return batch, logs | {"generated": 0.0}

    def push(self, batch: Batch) -> None:
        """Store each sequence of a generated batch (padding removed), dropping the oldest beyond `capacity`."""
        for ids, mask, labels in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["labels"].cpu()):
            keep = mask.bool()
            self.buffer.append({"input_ids": ids[keep], "labels": labels[keep]})
        del self.buffer[: max(len(self.buffer) - self.capacity, 0)]

    def sample(self, n: int) -> Batch:
        """n stored sequences drawn without replacement, right-padded (pad id 0, masked)."""
        rows = random.sample(self.buffer, min(n, len(self.buffer)))
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row["input_ids"])] = row["input_ids"]
            labels[i, : len(row["labels"])] = row["labels"]
            attention_mask[i, : len(row["input_ids"])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TeacherMixedResponses(DatasetResponses):
    """Every step, student responses to the batch's prompts sampled from `(1 − teacher_weight) q_θ +
    teacher_weight · p` per token, at `temperature`, at most `max_new_tokens`; the batch carries
    `sampling_logps` (log-probability of each token under that mixture). Logs `generated` = 1."""

    def __init__(self, *, teacher_weight: float, temperature: float, max_new_tokens: int) -> None:
        if not 0.0 <= teacher_weight < 1.0 or temperature <= 0 or max_new_tokens < 1:
            raise ConfigError("module.source needs 0 <= teacher_weight < 1, temperature > 0, max_new_tokens >= 1; "
                              f"got {teacher_weight}, {temperature}, {max_new_tokens}")
        self.teacher_weight, self.temperature, self.max_new_tokens = teacher_weight, temperature, max_new_tokens

    def training_batch(self, batch: Batch, generate: Generate, progress: float) -> tuple[Batch, dict[str, float]]:
        return generate("student", batch, self.temperature, self.max_new_tokens, teacher_weight=self.teacher_weight), {"generated": 1.0}
