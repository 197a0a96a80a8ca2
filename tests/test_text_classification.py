"""A user's own labelled text (`dataset=text_classification`, kdlab.data.text_classification): tiny csv, jsonl,
parquet files and a folder of class sub-folders written here with string labels and 5 classes, read as kdlab reads
them; GLUE's presets built on it; encoder presets' learning rates; a local encoder pair of two sizes end to end."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lm_files import bert_tokenizer, save_bert
from omegaconf import OmegaConf
from test_configs import compose_train
from text_files import CLASSES, TOPICS, corpus_rows, write_corpus, write_text_folder

from kdlab.data import GLUEDataModule, TextClassificationDataModule
from kdlab.data.glue import TASKS
from kdlab.errors import ConfigError, DataError, KdlabError
from kdlab.models.hf import sequence_classifier

WORDS = [text for texts in TOPICS.values() for text in texts]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tokenizer")
    bert_tokenizer(directory, WORDS)
    return str(directory)


def sources(root: Path) -> dict[str, dict]:
    """The same corpus in each format, as the datamodule's arguments."""
    return {
        "csv": {"data_files": write_corpus(root / "corpus.csv"), "label_column": "topic"},
        "jsonl": {"data_files": write_corpus(root / "corpus.jsonl"), "label_column": "topic"},
        "parquet": {"data_files": write_corpus(root / "corpus.parquet"), "label_column": "topic"},
        "text_folder": {"data_files": write_text_folder(root / "folder")},
    }


def message(make) -> str:
    with pytest.raises(KdlabError) as error:
        make()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("source", ["csv", "jsonl", "parquet", "text_folder"])
def test_every_format_gives_the_batch_contract_and_infers_the_classes(source: str, tokenizer: str, tmp_path: Path) -> None:
    data = TextClassificationDataModule(tokenizer, batch_size=8, **sources(tmp_path)[source])
    assert data.path == {"jsonl": "json"}.get(source, source)
    assert data.labels == CLASSES and data.num_classes == 5 and len(data.fingerprint) == 64
    data.setup("fit")
    sizes = {split: len(rows) for split, rows in data.encoded.items()}
    assert sizes == {"train": 48, "val": 6, "test": 6}  # 10% + 10% held out of 60 rows
    for split in ("val", "test"):  # stratified: every class in each held-out split
        assert sorted({row["label"] for row in data.encoded[split]}) == list(range(5))
    batch = next(iter(data.test_dataloader()))
    assert set(batch) == {"input", "label", "index"} and batch["label"].dtype == torch.int64
    assert set(batch["input"]) == {"input_ids", "token_type_ids", "attention_mask"} and batch["index"].tolist() == list(range(6))
    texts = [data.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) for ids, mask in
             zip(batch["input"]["input_ids"], batch["input"]["attention_mask"])]
    topic_of = {text: topic for topic, texts in TOPICS.items() for text in texts}
    assert [CLASSES[label] for label in batch["label"].tolist()] == [topic_of[text] for text in texts]  # each text with its own class


def test_the_splits_are_fixed_by_the_seed_and_named_splits_are_used_whole(tokenizer: str, tmp_path: Path) -> None:
    files = {"train": write_corpus(tmp_path / "train.csv"), "test": write_corpus(tmp_path / "test.csv", corpus_rows(1))}
    data = TextClassificationDataModule(tokenizer, data_files=files, label_column="topic")
    data.setup()
    assert {split: len(rows) for split, rows in data.encoded.items()} == {"train": 54, "val": 6, "test": 20}
    again, other = (TextClassificationDataModule(tokenizer, data_files=files, label_column="topic", split_seed=seed) for seed in (0, 1))
    assignment = data.assignment(data.read())
    assert all((again.assignment(again.read())[s][1] == assignment[s][1]).all() for s in assignment)
    assert not (other.assignment(other.read())["val"][1] == assignment["val"][1]).all()
    mapped = TextClassificationDataModule(tokenizer, data_files=files, label_column="topic", val_split="test", test_split=None)
    assert {split: len(rows) for split, (_, rows) in mapped.assignment(mapped.read()).items()} == {"train": 54, "val": 20, "test": 6}


def test_a_given_mapping_orders_the_ids_and_integer_labels_are_ids(tokenizer: str, tmp_path: Path) -> None:
    order = ["tech", "sport", "politics", "entertainment", "business"]
    data = TextClassificationDataModule(tokenizer, data_files=write_corpus(tmp_path / "c.csv"), label_column="topic", labels=order)
    corpus = data.read()
    assert corpus.names == order and corpus.labels["train"][:5] == [4, 3, 2, 1, 0]  # rows: business, entertainment, ...
    ids = [{"text": row["text"], "label": CLASSES.index(row["topic"])} for row in corpus_rows()]
    numbered = TextClassificationDataModule(tokenizer, data_files=write_corpus(tmp_path / "ids.jsonl", ids))
    assert numbered.labels == ["0", "1", "2", "3", "4"] and numbered.read().labels["train"][:5] == [0, 1, 2, 3, 4]
    assert TextClassificationDataModule(tokenizer, data_files=str(tmp_path / "ids.jsonl"), labels=CLASSES).labels == CLASSES
    assert TextClassificationDataModule(tokenizer, data_files=str(tmp_path / "ids.jsonl"), num_classes=7).num_classes == 7  # classes absent from the data


def test_bad_text_gets_one_line_naming_the_row_and_the_fix(tokenizer: str, tmp_path: Path) -> None:
    rows = corpus_rows()
    csv = write_corpus(tmp_path / "c.csv")

    def read(**kwargs):
        return lambda: TextClassificationDataModule(tokenizer, **{"label_column": "topic", **kwargs}).read()

    test = write_corpus(tmp_path / "test.csv", [*rows[:3], {"text": "a new sport", "topic": "weather"}])
    assert message(read(data_files={"train": csv, "test": test})) == (
        f"{test} row 4: label 'weather' is not a class of the train split ({', '.join(CLASSES)}): fix the row, "
        "or name every class with dataset.datamodule.labels=[...]")
    holes = write_corpus(tmp_path / "holes.jsonl", [*rows[:2], {"text": None, "topic": "sport"}])
    assert message(read(data_files=holes)) == f"{holes} line 3: no 'text' text (it has None): every row needs its text"
    unlabelled = write_corpus(tmp_path / "unlabelled.jsonl", [*rows[:2], {"text": "a goal", "topic": None}])
    assert message(read(data_files=unlabelled)).startswith(f"{unlabelled} line 3: the 'topic' label is None: every row needs")
    header = tmp_path / "header.csv"
    header.write_text("text,topic\n")
    assert message(read(data_files=str(header))) == f"dataset.datamodule.data_files: {header} has a split of no rows: give one example per row"
    assert message(read(data_files=csv, num_classes=4)).startswith("dataset.datamodule.num_classes=4, but the labels are 5 class names")
    assert message(read(data_files=csv, val_split="dev")) == (
        "dataset.datamodule.val_split=dev, but the data has no dev split (it has train): name one of them, or null to hold out a fraction of train")
    small = write_corpus(tmp_path / "small.csv", rows[:10])
    assert message(lambda: TextClassificationDataModule(tokenizer, data_files=small, label_column="topic").setup()).startswith(
        "the train split (10 rows) cannot give dataset.datamodule.test_fraction=0.1 of each class")
    for kwargs, start in (({"text_columns": ["a", "b", "c"]}, "dataset.datamodule.text_columns=['a', 'b', 'c'] must name one"),
                          ({"labels": ["a", "a"]}, "dataset.datamodule.labels=['a', 'a'] names a class twice"),
                          ({"metrics": ["auc"]}, "dataset.datamodule.metrics: 'auc' is not a metric kdlab adds: use f1, mcc"),
                          ({"data_files": [csv, str(holes)]}, "dataset.datamodule.data_files mixes formats")):
        assert message(lambda: TextClassificationDataModule(tokenizer, **{"data_files": csv, **kwargs})).startswith(start), kwargs
    with pytest.raises(ConfigError):
        TextClassificationDataModule(tokenizer, data_files=write_text_folder(tmp_path / "folder"), label_column="topic")


def test_a_teacher_tokenizer_that_would_feed_other_ids_is_refused(tokenizer: str, tmp_path: Path) -> None:
    csv = write_corpus(tmp_path / "c.csv")
    other = tmp_path / "other"
    bert_tokenizer(other, [*WORDS, "zebra"])  # one word more: the ids of the words after it move
    data = TextClassificationDataModule(tokenizer, data_files=csv, label_column="topic", teacher_tokenizer=str(other))
    text = message(data.setup)
    assert text.startswith(f"the teacher's tokenizer {other} and the student's {tokenizer} (dataset.datamodule.teacher_tokenizer, tokenizer) "
                           "disagree: their vocabularies differ (")
    assert text.endswith("pick a teacher and a student that share a tokenizer")
    same = tmp_path / "same"
    bert_tokenizer(same, WORDS)
    TextClassificationDataModule(tokenizer, data_files=csv, label_column="topic", teacher_tokenizer=str(same)).setup()


def test_task_metrics_follow_the_number_of_classes(tokenizer: str, tmp_path: Path) -> None:
    data = TextClassificationDataModule(tokenizer, data_files=write_corpus(tmp_path / "c.csv"), label_column="topic", metrics=["f1", "mcc"])
    metrics = data.task_metrics()
    predicted, target = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 1, 2, 3, 3, 1])
    for metric in metrics.values():
        metric.update(predicted, target)
    from sklearn.metrics import f1_score, matthews_corrcoef

    expected_f1 = f1_score(target.numpy(), predicted.numpy(), average="macro", labels=list(range(5)), zero_division=0)
    assert metrics["f1"].compute().item() == pytest.approx(expected_f1)
    assert metrics["mcc"].compute().item() == pytest.approx(matthews_corrcoef(target.numpy(), predicted.numpy()))
    assert set(GLUEDataModule("mrpc", "x").task_metrics()) == {"f1"} and set(GLUEDataModule("cola", "x").task_metrics()) == {"mcc"}


@pytest.mark.parametrize("task", ["cola", "mrpc", "rte", "sst2"])
def test_glue_presets_are_text_classification_with_the_task_settings(task: str, tmp_path: Path) -> None:
    cfg = compose_train([f"dataset=glue_{task}", "model=bert_base_to_bert6"], tmp_path)
    preset = instantiate(cfg.dataset.datamodule)
    module = GLUEDataModule(task, preset.tokenizer_name)
    for attribute in ("path", "name", "text_columns", "given_labels", "val_split", "test_split", "metrics", "label_column", "val_fraction"):
        assert getattr(preset, attribute) == getattr(module, attribute), attribute
    assert type(preset) is TextClassificationDataModule and cfg.dataset.num_classes == 2 and cfg.dataset.fingerprint is None  # nothing read
    assert list(cfg.dataset.labels) == list(TASKS[task][1]) == list(cfg.model.student.labels)


def test_encoder_presets_carry_encoder_learning_rates(tmp_path: Path) -> None:
    def rates(*overrides: str) -> tuple[float, float]:
        cfg = compose_train(list(overrides), tmp_path)
        return cfg.optimizer.lr, cfg.teacher.optimizer.lr

    assert rates() == (1.0e-2, 1.0e-2)  # the CNNs' default
    assert rates("model=bert_base_to_bert6") == (5.0e-5, 2.0e-5)
    assert rates("model=hf_encoders") == (3.0e-4, 5.0e-5)
    assert rates("model=hf_encoders", "optimizer.lr=1e-4") == (1.0e-4, 5.0e-5)
    assert rates("experiment=sinkd_glue_rte") == (2.0e-5, 2.0e-5)  # an experiment's recipe wins


def test_the_class_names_become_the_saved_model_s_id2label(tokenizer: str, tmp_path: Path) -> None:
    encoder = save_bert(tmp_path / "bert", bert_tokenizer(tmp_path / "tok", WORDS))
    model = sequence_classifier(encoder, 5, labels=CLASSES)
    model.model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)} and config["label2id"]["tech"] == 4
    with pytest.raises(ValueError, match="labels has 2 class names but num_labels=5"):
        sequence_classifier(encoder, 5, labels=["a", "b"])


def test_train_on_own_text_with_a_local_encoder_pair_end_to_end(tmp_path: Path) -> None:
    """A teacher of 2 layers x 16 and a student of 1 layer x 8 by path, string labels in csv: the mapping is saved with the run."""
    from conftest import kdlab

    tokenizer = bert_tokenizer(tmp_path / "tokenizer", WORDS)
    teacher, student = save_bert(tmp_path / "teacher", tokenizer), save_bert(tmp_path / "student", tokenizer, hidden_size=8, num_hidden_layers=1)
    outputs = tmp_path / "outputs"
    kdlab("train", "+method=kd", "dataset=text_classification", f"dataset.datamodule.data_files={write_corpus(tmp_path / 'corpus.csv')}",
          "dataset.datamodule.label_column=topic", "dataset.batch_size=16", "model=hf_encoders", f"model.teacher.name_or_path={teacher}",
          f"model.student.name_or_path={student}", "trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none", outputs=outputs, timeout=300)
    (path,) = outputs.glob("runs/*/*/results.json")
    record = json.loads(path.read_text())
    assert record["status"] == "completed" and record["dataset"] == "text_classification" and record["model"] == "hf_encoders"
    assert record["config"]["dataset"]["num_classes"] == 5 and record["config"]["dataset"]["labels"] == CLASSES
    assert record["config"]["optimizer"]["lr"] == 3.0e-4 and record["teacher"]["source"] == "trained"
    assert 0 <= record["metrics"]["test/acc"] <= 1 and "test/teacher_acc" in record["metrics"]
    assert json.loads((path.parent / "labels.json").read_text()) == {str(i): name for i, name in enumerate(CLASSES)}
    assert OmegaConf.load(path.parent / ".hydra" / "config.yaml").dataset.datamodule.label_column == "topic"
