"""GLUE classification tasks (Wang et al. 2019) through HF `datasets`, for encoder distillation (SinKD's setting).

Source: `datasets.load_dataset("nyu-mll/glue", task)` for users, or local `json`/`parquet`/`csv`
files with GLUE's columns (`path="parquet", data_files=...`). GLUE's test labels are hidden, so as in
the papers the reported split is the dev set: kdlab's `test` = the task's `validation` split
(`validation_matched` for MNLI), and `val` (model selection) is carved from train (`val_fraction`,
seeded). STS-B is a regression task and is not offered.

Batches are kdlab classification batches: `input` = the tokenised dict (`input_ids`,
`attention_mask`, `token_type_ids` when the tokenizer makes them, padded to the longest in the
batch), `label [B]`, `index [B]` — so `DistillModule` and every classification objective (KD,
SinKD, ...) run on the `[B, C]` logits of `kdlab.models.hf.SequenceClassifier` unchanged.
`task_metrics()` adds the task's GLUE metric beside accuracy: F1 of the positive class (MRPC, QQP)
or Matthews correlation (CoLA), logged as `<split>/f1`, `<split>/mcc`.
"""

from collections.abc import Mapping

import torch
from torchmetrics import Metric
from torchmetrics.classification import BinaryF1Score, MulticlassMatthewsCorrCoef

from kdlab.data.text import DataFiles, TextDataModule

# task -> (text columns, number of classes, dev split)
TASKS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "cola": (("sentence",), 2, "validation"),
    "sst2": (("sentence",), 2, "validation"),
    "mrpc": (("sentence1", "sentence2"), 2, "validation"),
    "qqp": (("question1", "question2"), 2, "validation"),
    "qnli": (("question", "sentence"), 2, "validation"),
    "rte": (("sentence1", "sentence2"), 2, "validation"),
    "wnli": (("sentence1", "sentence2"), 2, "validation"),
    "mnli": (("premise", "hypothesis"), 3, "validation_matched"),
}


class GLUEDataModule(TextDataModule):
    """One GLUE task (see the module docstring). `path`/`name`/`data_files` go to `load_dataset`
    (`name` defaults to the task); `tokenizer` is the student's (hub name or local path)."""

    batches = "labelled"  # what the batches hold; a regime trains on one kind (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        task: str,
        tokenizer: str,
        path: str = "nyu-mll/glue",
        name: str | None = None,
        data_files: DataFiles = None,
        val_fraction: float = 0.1,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; kdlab offers {', '.join(TASKS)} (STS-B is regression)")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        super().__init__(path, tokenizer, name if name is not None or data_files is not None else task, data_files, batch_size, num_workers)
        self.task, self.val_fraction, self.max_length, self.seed = task, val_fraction, max_length, seed
        self.columns, self.num_classes, self.dev_split = TASKS[task]
        self.encoded: dict[str, list[dict[str, list[int]]]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.encoded:
            return
        self.load_tokenizer()
        data = self.load()
        carved = data["train"].train_test_split(test_size=self.val_fraction, seed=self.seed)
        for split, rows in (("train", carved["train"]), ("val", carved["test"]), ("test", data[self.dev_split])):
            missing = [column for column in (*self.columns, "label") if column not in rows.column_names]
            if missing:
                raise ValueError(f"the {split} rows of GLUE {self.task} have no column {', '.join(map(repr, missing))} (columns: {rows.column_names})")
            labels = list(rows["label"])
            if min(labels) < 0 or max(labels) >= self.num_classes:
                raise ValueError(f"GLUE {self.task} {split} labels must be in [0, {self.num_classes}), got {min(labels)}..{max(labels)} "
                                 "(GLUE's test split has hidden labels, -1: kdlab tests on the dev split)")
            texts = [list(rows[column]) for column in self.columns]
            encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
            self.encoded[split] = [{key: encoded[key][i] for key in encoded} | {"label": label} for i, label in enumerate(labels)]

    def split_dataset(self, split: str) -> list[tuple[int, dict[str, list[int]]]]:
        return list(enumerate(self.encoded[split]))

    def collate(self, items: list[tuple[int, dict]]) -> dict:
        features = [{key: value for key, value in row.items() if key != "label"} for _, row in items]
        return {"input": dict(self.tokenizer.pad(features, return_tensors="pt")),
                "label": torch.tensor([row["label"] for _, row in items]),
                "index": torch.tensor([index for index, _ in items])}

    def task_metrics(self) -> Mapping[str, Metric]:
        """The task's GLUE metric beside accuracy (logged by the classification regimes)."""
        if self.task in ("mrpc", "qqp"):
            return {"f1": BinaryF1Score()}
        if self.task == "cola":
            return {"mcc": MulticlassMatthewsCorrCoef(num_classes=2)}
        return {}
