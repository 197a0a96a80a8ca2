"""`dataset=text_classification`: a labelled text corpus of any number of classes, from local files or a
Hugging Face dataset, tokenised for the encoder pair (`kdlab.models.hf.SequenceClassifier`).

Sources (`path`, `name`, `data_files`; docs/text.md):

- local files: csv, json / jsonl (one object per line) or parquet, `data_files` a file, a list, or
  split -> file(s); the format comes from the extension (or `path=csv|json|parquet`);
- a folder of text files with one sub-folder per class, like torchvision's ImageFolder:
  `ROOT/<class>/<file>` or `ROOT/{train,validation,test}/<class>/<file>` (`data_files=ROOT`,
  `path=text_folder`); each file is one example, read as UTF-8 (Latin-1 when it is not UTF-8);
- a Hugging Face dataset by name (`path=ag_news`, `name=` its configuration).

Columns: `text_columns` (one, or two for sentence pairs, tokenised as a pair) and `label_column`.
Labels become class ids: string labels by their position in `labels` (the class names in id order),
or, without it, in the sorted names of the train split's labels; integer labels are ids in
`[0, num_classes)`, named by `labels`, by the dataset's `ClassLabel` names, or "0", "1", .... The
mapping (`labels`, id -> name) is saved with the run (`labels.json`) and names the classes of a saved
Hugging Face model (`id2label`). `num_classes` and `labels` are inferred from the data unless given.

Splits: `train` is the data's train split; `val` (model selection) and `test` (reported) are the
splits `val_split` and `test_split` name, `auto` the data's "validation" (or "val", "dev") and
"test" split when it has one, and null (or `auto` without one) a stratified fraction of train
(`val_fraction`, `test_fraction`, fixed by `split_seed`). GLUE's presets test on the dev split
(`test_split: validation`, `val_split: null`).

Batches: `input` = the tokenised dict (`input_ids`, `attention_mask`, `token_type_ids` when the
tokenizer makes them, padded to the longest in the batch), `label [B]`, `index [B]`. Teacher and
student read the same `input`, so their tokenizers must agree: `teacher_tokenizer` is compared with
`tokenizer` (vocabulary, and the encoding of the first training rows) in `setup`, before training.
Reading checks the data (columns, labels, classes) and is cached per process, so the config's
resolvers, the run's checks and the datamodule read the files once.
"""

import glob
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torchmetrics import Metric
from torchmetrics.classification import BinaryF1Score, MulticlassF1Score, MulticlassMatthewsCorrCoef

from kdlab.data.text import DataFiles, TextDataModule, first_missing, local_files, plain, row_location, tokenizer_at
from kdlab.errors import ConfigError, DataError

TEXT_FOLDER = "text_folder"
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
VAL_NAMES, TEST_NAMES = ("validation", "val", "dev"), ("test",)  # the splits `auto` takes, first found
METRICS = ("f1", "mcc")
_CORPORA: dict[str, "Corpus"] = {}  # the source's settings -> its corpus: each source is read once per process
_CACHED = 4


@dataclass(frozen=True)
class Corpus:
    """The checked data of the splits a run uses: `texts[split]` one list per text column, `labels[split]`
    class ids, `names` the class names in id order; `val`/`test` the data's split names (None: carved from train)."""

    texts: dict[str, list[list[str]]]
    labels: dict[str, list[int]]
    names: list[str]
    val: str | None
    test: str | None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the texts, ids, class names and split names: a cached teacher is reused only for the same data."""
        return hashlib.sha256(json.dumps([self.texts, self.labels, self.names, self.val, self.test]).encode()).hexdigest()


def data_format(path: str | None, data_files: DataFiles) -> str:
    """`path` when given, else the format of `data_files` from their extension (`text_folder` for one folder)."""
    if path is not None:
        return path
    files = local_files(data_files)
    if not files:
        raise ConfigError("dataset.datamodule.data_files is not set: give your csv, jsonl or parquet file(s) or a folder with one "
                          "sub-folder per class, or a Hugging Face dataset with dataset.datamodule.path=NAME (docs/text.md)")
    if len(files) == 1 and Path(files[0]).expanduser().is_dir():
        return TEXT_FOLDER
    formats = {}
    for file in files:
        if Path(file).suffix.lower() not in FORMATS:
            raise DataError(f"dataset.datamodule.data_files: {file} is not a csv, json, jsonl or parquet file (by its extension): give "
                            "files of those formats or a folder of class sub-folders, or name the format with dataset.datamodule.path=csv|json|parquet")
        formats.setdefault(FORMATS[Path(file).suffix.lower()], file)
    if len(formats) > 1:
        (first, a), (second, b) = list(formats.items())[:2]
        raise DataError(f"dataset.datamodule.data_files mixes formats ({a} is {first}, {b} is {second}): give files of one format")
    return next(iter(formats))


def read_text(file: Path) -> str:
    """The text of `file`: UTF-8, or Latin-1 (which decodes any bytes) when it is not UTF-8."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_text_folder(root: str) -> dict[str, dict[str, list[str]]]:
    """split -> {"text": [...], "label": [class folder names]} of `root/<class>/<file>`, or of
    `root/<split>/<class>/<file>` when `root` has a train folder (splits: train, validation, val, dev, test)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.datamodule.data_files={root} is not a folder: give the folder of your text files (docs/text.md)")
    named = {split: folder / split for split in ("train", *VAL_NAMES, *TEST_NAMES) if (folder / split).is_dir()}
    splits = {}
    for split, directory in (named if "train" in named else {"train": folder}).items():
        rows: dict[str, list[str]] = {"text": [], "label": []}
        for class_folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(f for f in class_folder.iterdir() if f.is_file() and not f.name.startswith(".")):
                rows["text"].append(read_text(file))
                rows["label"].append(class_folder.name)
        if not rows["text"]:
            raise DataError(f"{directory} has no text files in class folders: put them in one sub-folder per class, "
                            f"{directory}/<class>/<file>.txt (docs/text.md)")
        splits[split] = rows
    return splits


def label_value(value: Any, where: Callable[[], str], column: str) -> str | int:
    """A label as a class name (str) or a class id (int); DataError for a missing or fractional one."""
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where()}: the {column!r} label is {value!r}: every row needs a class name or a class id 0, 1, ...")
    return value


def class_ids(
    values: Mapping[str, list[Any]], labels: Sequence[str] | None, num_classes: int | None, class_names: Sequence[str] | None,
    where: Callable[[str, int], str], column: str, source: str,
) -> tuple[list[str], dict[str, list[int]]]:
    """The class names (id order) and the class ids of every split's label `values` (see the module docstring).

    DataError for a string that `labels` (or, without it, the train split) does not have, an id
    outside `[0, num_classes)`, or a train split of one class; ConfigError when `num_classes` disagrees.
    """
    typed = {split: [label_value(v, lambda s=split, i=i: where(s, i), column) for i, v in enumerate(rows)] for split, rows in values.items()}
    kinds = {type(v) for rows in typed.values() for v in rows}
    if len(kinds) > 1:
        raise DataError(f"the {column!r} labels mix class names and class ids ({where('train', 0)} has {typed['train'][0]!r}): "
                        "give one kind")
    if kinds == {str}:
        names = list(labels) if labels is not None else sorted(set(typed["train"]))
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"dataset.datamodule.num_classes={num_classes}, but the labels are {len(names)} class names ({', '.join(names)}): "
                              f"drop num_classes (it is inferred), or name every class with dataset.datamodule.labels=[...]")
        index = {name: i for i, name in enumerate(names)}
        for split, rows in typed.items():
            for i, value in enumerate(rows):
                if value not in index:
                    mapping = (f"not in dataset.datamodule.labels ({', '.join(names)}): add it there, or fix the row" if labels is not None else
                               f"not a class of the train split ({', '.join(names)}): fix the row, or name every class with dataset.datamodule.labels=[...]")
                    raise DataError(f"{where(split, i)}: label {value!r} is {mapping}")
        ids = {split: [index[value] for value in rows] for split, rows in typed.items()}
    else:
        largest = max(max(rows, default=0) for rows in typed.values())
        count = len(labels) if labels is not None else num_classes if num_classes is not None else len(class_names) if class_names else largest + 1
        setting = (f"dataset.datamodule.labels has {count} names" if labels is not None else f"dataset.datamodule.num_classes={count}"
                   if num_classes is not None else f"the dataset's {count} class names" if class_names else "the largest label + 1")
        for split, rows in typed.items():
            for i, value in enumerate(rows):
                if value < 0:
                    raise DataError(f"{where(split, i)}: label {value} is negative: class ids are 0, 1, ..., num_classes - 1 "
                                    "(a hidden label, as in GLUE's test split? test on a labelled split: dataset.datamodule.test_split=validation)")
                if value >= count:
                    raise DataError(f"{where(split, i)}: label {value} is outside [0, {count}) ({setting}): fix the labels, "
                                    f"or set dataset.datamodule.num_classes={largest + 1} (null: the largest label + 1)")
        names = list(labels) if labels is not None else list(class_names) if class_names and len(class_names) == count else [str(i) for i in range(count)]
        ids = typed
    present = sorted(set(ids["train"]))
    if len(present) < 2:
        raise DataError(f"{source}: the train split has one class only ({names[present[0]]!r}): "
                        "a classifier needs at least two classes; give rows of the other classes")
    return names, ids


def carve(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`rows` split into (rest, held out): `fraction` of them held out, each class in the same proportion, fixed by `seed`."""
    try:
        rest, held = train_test_split(rows, test_size=fraction, stratify=labels[rows], random_state=seed)
    except ValueError as error:  # scikit-learn: a class with too few rows for the fraction
        raise DataError(f"the train split ({len(rows)} rows) cannot give dataset.datamodule.{what}={fraction} of each class ({error}): "
                        "give more rows per class, or give that split as a file (dataset.datamodule.data_files.validation|test)") from None
    return np.sort(rest), np.sort(held)


def tokenisation_difference(student: Any, teacher: Any, texts: list[list[str]], max_length: int) -> str | None:
    """How `teacher` would give a text other ids than `student`: their vocabularies, or their encodings of
    the first 16 rows of `texts` (one list per text column); None when they agree."""
    mine, theirs = student.get_vocab(), teacher.get_vocab()
    if mine != theirs:
        differing = sorted(token for token in mine.keys() | theirs.keys() if mine.get(token) != theirs.get(token))
        token = differing[0]
        return (f"their vocabularies differ ({len(mine)} vs {len(theirs)} tokens, {len(differing)} with other ids; "
                f"{token!r}: {mine.get(token)} vs {theirs.get(token)})")
    sample = [column[:16] for column in texts]
    ours, other = (tokenizer(*sample, truncation=True, max_length=max_length)["input_ids"] for tokenizer in (student, teacher))
    for row, (a, b) in enumerate(zip(ours, other)):
        if a != b:
            return f"they encode train row {row + 1} differently ({a[:8]} vs {b[:8]})"
    return None


class TextClassificationDataModule(TextDataModule):
    """A labelled text corpus (see the module docstring); `tokenizer` is the student's (hub name or local
    path), `teacher_tokenizer` the teacher's (null: no teacher, or the same). `metrics` adds `f1` (binary:
    of class 1; else macro) and `mcc` (Matthews correlation) to the accuracy panel (`task_metrics`)."""

    batches = "labelled"  # what the batches hold (kdlab.modules.base.TrainingModule.batches)

    def __init__(
        self,
        tokenizer: str,
        data_files: DataFiles = None,
        path: str | None = None,
        name: str | None = None,
        text_columns: list[str] | None = None,
        label_column: str = "label",
        labels: list[str] | None = None,
        num_classes: int | None = None,
        val_split: str | None = "auto",
        test_split: str | None = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        metrics: list[str] | None = None,
        teacher_tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        data_files, source = plain(data_files), data_format(path, data_files)
        local = source in (*FORMATS.values(), TEXT_FOLDER)  # a file format: `name` (a hub dataset's configuration) does not apply
        super().__init__(source, tokenizer, None if local else name, data_files, batch_size, num_workers)
        self.text_columns = list(plain(text_columns) or ["text"])
        self.label_column, self.given_labels, self.given_num_classes = label_column, plain(labels), num_classes
        self.val_split, self.test_split, self.val_fraction, self.test_fraction = val_split, test_split, val_fraction, test_fraction
        self.split_seed, self.metrics, self.teacher_tokenizer, self.max_length = split_seed, list(plain(metrics) or []), teacher_tokenizer, max_length
        if not 1 <= len(self.text_columns) <= 2:
            raise ConfigError(f"dataset.datamodule.text_columns={self.text_columns} must name one text column, or two for sentence pairs")
        if self.path == TEXT_FOLDER and (self.text_columns != ["text"] or label_column != "label"):
            raise ConfigError("a text folder has the columns text and label: drop dataset.datamodule.text_columns and label_column")
        if self.given_labels is not None and len(set(self.given_labels)) != len(self.given_labels):
            raise ConfigError(f"dataset.datamodule.labels={self.given_labels} names a class twice: give each class once, in id order")
        if self.given_labels is not None and num_classes is not None and num_classes != len(self.given_labels):
            raise ConfigError(f"dataset.datamodule.num_classes={num_classes}, but dataset.datamodule.labels has {len(self.given_labels)} "
                              "names: drop num_classes (the labels give it)")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(f"dataset.datamodule.val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and sum to < 1")
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown:
            raise ConfigError(f"dataset.datamodule.metrics: {unknown[0]!r} is not a metric kdlab adds: use {', '.join(METRICS)}")
        self.encoded: dict[str, list[dict[str, Any]]] = {}

    # ---- reading --------------------------------------------------------------------------------
    def read(self) -> Corpus:
        """The checked corpus (cached per process by the source's settings and the files' sizes and times)."""
        files = [file for pattern in local_files(self.data_files) for file in sorted(glob.glob(os.path.expanduser(pattern)))]
        stamps = [(file, os.stat(file).st_mtime_ns, os.stat(file).st_size) for file in files]
        key = json.dumps([self.path, self.name, self.data_files, self.text_columns, self.label_column, self.given_labels,
                          self.given_num_classes, self.val_split, self.test_split, stamps], default=str)
        if key not in _CORPORA:
            if len(_CORPORA) >= _CACHED:
                _CORPORA.pop(next(iter(_CORPORA)))
            _CORPORA[key] = self._read()
        return _CORPORA[key]

    def _read(self) -> Corpus:
        class_names = None
        if self.path == TEXT_FOLDER:
            tables = read_text_folder(str(self.data_files))
        else:
            data = self.load()
            tables = {split: rows for split, rows in data.items()}
            feature = data["train"].features.get(self.label_column) if "train" in data else None
            class_names = getattr(feature, "names", None)
        if "train" not in tables:
            raise DataError(f"{self.source}: the data has no train split (it has {', '.join(tables)}): name one train, "
                            "dataset.datamodule.data_files={train: FILE, test: FILE}")
        val, test = self.pick(self.val_split, VAL_NAMES, tables, "val_split"), self.pick(self.test_split, TEST_NAMES, tables, "test_split")
        used = list(dict.fromkeys(split for split in ("train", val, test) if split is not None))
        columns = [*self.text_columns, self.label_column]
        for split in used:
            have = list(tables[split].column_names if hasattr(tables[split], "column_names") else tables[split])
            missing = [column for column in columns if column not in have]
            if missing:
                key = "label_column" if missing[0] == self.label_column else "text_columns"
                raise DataError(f"{self.located(split)} has no column {missing[0]!r} (its columns: {', '.join(have)}): "
                                f"set dataset.datamodule.{key} to the column{'' if key == 'label_column' else '(s)'} to use")
            if len(tables[split][self.label_column]) == 0:
                raise DataError(f"{self.located(split)} has no rows: give one example per row")
        if self.path != TEXT_FOLDER and (hole := first_missing({split: tables[split] for split in used}, self.text_columns, self.data_files)):
            raise DataError(f"{hole}: every row needs its text")
        names, ids = class_ids({split: list(tables[split][self.label_column]) for split in used}, self.given_labels, self.given_num_classes,
                               class_names, self.where, self.label_column, self.located("train"))
        texts = {split: [list(tables[split][column]) for column in self.text_columns] for split in used}
        return Corpus(texts, ids, names, val, test)

    def pick(self, split: str | None, candidates: Sequence[str], tables: Mapping[str, Any], key: str) -> str | None:
        """The data's split that `split` names (`auto`: the first of `candidates` it has; None: carved from train)."""
        if split == "auto":
            return next((name for name in candidates if name in tables), None)
        if split is not None and split not in tables:
            raise DataError(f"dataset.datamodule.{key}={split}, but the data has no {split} split (it has {', '.join(tables)}): "
                            f"name one of them, or null to hold out a fraction of train")
        return split

    @property
    def source(self) -> str:
        """The files, folder or dataset the data come from, as messages name them."""
        return str(self.data_files) if self.data_files is not None else f"{self.path}" + (f" ({self.name})" if self.name else "")

    def located(self, split: str) -> str:
        """The file of `split` when it has one, else "SOURCE's SPLIT split"."""
        files = self.data_files.get(split) if isinstance(self.data_files, dict) else self.data_files if split == "train" else None
        return files if isinstance(files, str) else f"{self.source}'s {split} split"

    def where(self, split: str, row: int) -> str:
        return row_location(self.data_files if self.path != TEXT_FOLDER else None, split, row)

    @property
    def local(self) -> bool:
        """The data are local files (read and checked when the config is resolved: `fingerprint`), not a hub dataset."""
        return bool(local_files(self.data_files))

    @property
    def labels(self) -> list[str]:
        """The class names in id order (given, or read from the data)."""
        return list(self.given_labels) if self.given_labels is not None else self.read().names

    @property
    def num_classes(self) -> int:
        """The number of classes (given by `labels` or `num_classes`, or read from the data)."""
        if self.given_labels is not None:
            return len(self.given_labels)
        return self.given_num_classes if self.given_num_classes is not None else len(self.read().names)

    @property
    def fingerprint(self) -> str | None:
        """The corpus's fingerprint for local data; None for a hub dataset (its name and configuration identify it)."""
        return self.read().fingerprint if self.local else None

    def prepare_data(self) -> None:
        self.read()  # download a hub dataset once (process 0); `setup` then reads the local cache

    # ---- splits and batches ---------------------------------------------------------------------
    def assignment(self, corpus: Corpus) -> dict[str, tuple[str, np.ndarray]]:
        """kdlab split -> (the data's split, its rows): the named splits whole, the others carved from train."""
        train = np.array(corpus.labels["train"])
        rows = np.arange(len(train))
        test = (corpus.test, np.arange(len(corpus.labels[corpus.test]))) if corpus.test is not None else None
        if test is None:
            rows, held = carve(train, rows, self.test_fraction, self.split_seed, "test_fraction")
            test = ("train", held)
        val = (corpus.val, np.arange(len(corpus.labels[corpus.val]))) if corpus.val is not None else None
        if val is None:
            fraction = self.val_fraction / (1 - self.test_fraction) if corpus.test is None else self.val_fraction
            rows, held = carve(train, rows, fraction, self.split_seed, "val_fraction")
            val = ("train", held)
        return {"train": ("train", rows), "val": val, "test": test}

    def setup(self, stage: str | None = None) -> None:
        if self.encoded:
            return
        corpus = self.read()
        self.load_tokenizer()
        if self.teacher_tokenizer is not None and self.teacher_tokenizer != self.tokenizer_name:
            teacher = tokenizer_at(self.teacher_tokenizer, "dataset.datamodule.teacher_tokenizer")
            difference = tokenisation_difference(self.tokenizer, teacher, corpus.texts["train"], self.max_length)
            if difference is not None:
                raise DataError(f"the teacher's tokenizer {self.teacher_tokenizer} and the student's {self.tokenizer_name} "
                                f"(dataset.datamodule.teacher_tokenizer, tokenizer) disagree: {difference}. Both models read one "
                                "tokenisation of the text: pick a teacher and a student that share a tokenizer")
        for split, (name, rows) in self.assignment(corpus).items():
            texts = [[column[i] for i in rows] for column in corpus.texts[name]]
            encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
            labels = [corpus.labels[name][i] for i in rows]
            self.encoded[split] = [{key: encoded[key][i] for key in encoded} | {"label": label} for i, label in enumerate(labels)]

    def split_dataset(self, split: str) -> list[tuple[int, dict[str, Any]]]:
        return list(enumerate(self.encoded[split]))

    def collate(self, items: list[tuple[int, dict]]) -> dict:
        features = [{key: value for key, value in row.items() if key != "label"} for _, row in items]
        return {"input": dict(self.tokenizer.pad(features, return_tensors="pt")),
                "label": torch.tensor([row["label"] for _, row in items]),
                "index": torch.tensor([index for index, _ in items])}

    def task_metrics(self) -> dict[str, Metric]:
        """`metrics` beside accuracy, of the predicted classes (logged by the classification regimes as `<split>/f1`, `<split>/mcc`)."""
        classes = self.num_classes
        made = {"f1": lambda: BinaryF1Score() if classes == 2 else MulticlassF1Score(num_classes=classes, average="macro"),
                "mcc": lambda: MulticlassMatthewsCorrCoef(num_classes=classes)}
        return {metric: made[metric]() for metric in self.metrics}
