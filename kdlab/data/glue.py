"""GLUE classification tasks (Wang et al. 2019), for encoder distillation (SinKD's setting): each one a
`TextClassificationDataModule` with the task's text columns, class names and dev split.

Source: `datasets.load_dataset("nyu-mll/glue", task)` for users, or local `json`/`parquet`/`csv`
files with GLUE's columns (`path="parquet", data_files=...`). GLUE's test labels are hidden, so as in
the papers the reported split is the dev set: kdlab's `test` = the task's `validation` split
(`validation_matched` for MNLI), and `val` (model selection) is carved from train (`val_fraction`,
seeded, stratified). STS-B is a regression task and is not offered. Beside accuracy, the task's GLUE
metric: F1 of the positive class (MRPC, QQP) or Matthews correlation (CoLA), logged as
`<split>/f1`, `<split>/mcc`. The presets `dataset=glue_*` are presets of `dataset=text_classification`
with the same settings (`tests/test_text_classification.py` checks that they agree with `TASKS`).
"""

from kdlab.data.text import DataFiles
from kdlab.data.text_classification import TextClassificationDataModule

# task -> (text columns, class names in id order (GLUE's ClassLabel names), dev split, GLUE metric or None)
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, str | None]] = {
    "cola": (("sentence",), ("unacceptable", "acceptable"), "validation", "mcc"),
    "sst2": (("sentence",), ("negative", "positive"), "validation", None),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "validation", "f1"),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate"), "validation", "f1"),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment"), "validation", None),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment"), "validation", None),
    "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment"), "validation", None),
    "mnli": (("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "validation_matched", None),
}


class GLUEDataModule(TextClassificationDataModule):
    """One GLUE task (see the module docstring). `path`/`name`/`data_files` go to `load_dataset`
    (`name`, the hub dataset's configuration, defaults to the task); `tokenizer` is the student's (hub name or local path)."""

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
        split_seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; kdlab offers {', '.join(TASKS)} (STS-B is regression)")
        columns, labels, dev_split, metric = TASKS[task]
        super().__init__(tokenizer, data_files, path, name or task, list(columns),
                         labels=list(labels), val_split=None, test_split=dev_split, val_fraction=val_fraction, split_seed=split_seed,
                         metrics=[metric] if metric else [], max_length=max_length, batch_size=batch_size, num_workers=num_workers)
        self.task = task
