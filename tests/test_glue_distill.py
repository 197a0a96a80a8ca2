"""GLUE encoders: tiny saved BERTs and parquet files through the user's path (teacher fine-tuned by the cache, then SinKD)."""

import json
from pathlib import Path

import pytest
import torch
from lm_files import bert_tokenizer, save_bert, write_glue_pairs
from test_configs import compose_train

from kdlab.data.glue import GLUEDataModule
from kdlab.models.hf import sequence_classifier
from kdlab.run import run


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("glue")
    return {"bert": save_bert(root / "bert", bert_tokenizer(root / "tokenizer")), "data": write_glue_pairs(root / "data")}


def test_batches_are_classification_batches_with_token_types(files: dict) -> None:
    data = GLUEDataModule("rte", files["bert"], path="parquet", data_files=files["data"], val_fraction=0.25, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.test_dataloader()))
    assert set(batch["input"]) == {"input_ids", "attention_mask", "token_type_ids"} and batch["label"].tolist() == [0, 1, 0, 1]
    first = batch["input"]["input_ids"][0][batch["input"]["attention_mask"][0].bool()].tolist()
    tokenizer = data.tokenizer
    assert first[0] == tokenizer.cls_token_id and first.count(tokenizer.sep_token_id) == 2
    assert batch["input"]["token_type_ids"][0].max() == 1  # the second sentence is segment 1
    student = sequence_classifier(files["bert"], num_labels=2, num_hidden_layers=1)
    assert student.model.config.num_hidden_layers == 1 and student(batch["input"]).shape == (4, 2)
    teacher = sequence_classifier(files["bert"], num_labels=2)  # PKD-style: the student's layer is the encoder's first
    torch.testing.assert_close(student.model.bert.encoder.layer[0].state_dict(), teacher.model.bert.encoder.layer[0].state_dict())
    assert set(data.task_metrics()) == set() and set(GLUEDataModule("mrpc", "x").task_metrics()) == {"f1"}
    assert set(GLUEDataModule("cola", "x").task_metrics()) == {"mcc"}


def test_sinkd_glue_experiment_runs_two_steps(files: dict, tmp_path: Path) -> None:
    """experiment=sinkd_glue_rte on MRPC-shaped files: the cache fine-tunes the teacher, SinKD trains the student; F1 is reported."""
    data = files["data"]
    cfg = compose_train([
        "experiment=sinkd_glue_rte", "dataset=glue_mrpc", f"model.teacher.name_or_path={files['bert']}", f"model.student.name_or_path={files['bert']}",
        "model.student.num_hidden_layers=1", "dataset.datamodule.path=parquet",
        f"dataset.datamodule.data_files={{train:{data['train']},validation:{data['validation']}}}", "dataset.batch_size=8",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "teacher.max_epochs=1", "logger=none", "~callbacks.progress_bar",
        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
    ], tmp_path)
    metrics = run(cfg)
    for name in ("train/loss", "val/acc", "test/acc", "test/f1", "test/teacher_acc", "test/kl"):
        assert name in metrics, name
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["teacher"]["source"] == "trained" and record["method"] == "sinkd"
