"""`kdlab eval` and `kdlab export` on one tiny trained digits run (KD, one epoch) and one tiny BERT classifier run.

References are computed here, independently of kdlab.saved_run: the student built from the config its
results.json records, given the `model.*` weights of its last checkpoint; the teacher from its cache entry.
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import kdlab
from hydra.utils import instantiate
from image_files import write_arrays
from lm_files import bert_tokenizer, save_bert, write_glue_pairs

from kdlab.data import DigitsDataModule

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
FAST = ["trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none", "~callbacks.progress_bar"]


def run_dir_of(outputs: Path) -> Path:
    (results,) = outputs.glob("runs/*/*/results.json")
    return results.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of `kdlab train` (KD on the digits, one epoch), shared by the tests of this file."""
    outputs = tmp_path_factory.mktemp("digits") / "outputs"
    kdlab("train", *FAST, outputs=outputs)
    return run_dir_of(outputs)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> Path:
    """Other data for the run: 8x8 grey images of 10 classes (as the digits) and of 3 classes; a copy of the run without its checkpoint."""
    root = tmp_path_factory.mktemp("data")
    digits = DigitsDataModule()
    digits.setup()
    train = digits.split_dataset("train")
    pixels = (train.inputs[:200, 0].numpy() * 40 + 100).clip(0, 255).astype(np.uint8)
    write_arrays(root / "ten_classes.npz", pixels, train.labels[:200].numpy())
    write_arrays(root / "three_classes.npz", pixels, np.arange(200) % 3)
    shutil.copytree(trained, root / "no_checkpoint", ignore=shutil.ignore_patterns("checkpoints", "eval.json", "export"))
    (root / "not_a_run").mkdir()
    (root / "full").mkdir()
    (root / "full" / "file").write_text("taken")
    return root


def outputs_of(run: Path) -> Path:
    return run.parents[2]


def evaluate(run: Path, *overrides: str) -> dict:
    """`kdlab eval RUN OVERRIDES`; the entry it appended to eval.json (which keeps every earlier one)."""
    path = run / "eval.json"
    before = json.loads(path.read_text()) if path.exists() else []
    kdlab("eval", str(run), *overrides, outputs=outputs_of(run))
    after = json.loads(path.read_text())
    assert after[:-1] == before
    return after[-1]


def trained_student(run: Path) -> torch.nn.Module:
    """The student as results.json's config builds it, with the `model.*` weights of `checkpoints/last.ckpt`."""
    config = json.loads((run / "results.json").read_text())["config"]
    student = instantiate(config["model"]["student"])
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    student.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return student.eval()


def digits_test_inputs() -> torch.Tensor:
    digits = DigitsDataModule()
    digits.setup()
    return digits.split_dataset("test").inputs


def test_eval_repeats_the_runs_test_and_val_metrics_and_says_what_it_evaluated(trained: Path) -> None:
    record = json.loads((trained / "results.json").read_text())
    test = evaluate(trained)
    assert test["metrics"] == {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
    assert {"test/acc", "test/teacher_acc", "test/agreement", "test/kl"} <= set(test["metrics"])
    val = evaluate(trained, "split=val")
    assert val["metrics"] == {k: v for k, v in record["metrics"].items() if k.startswith("val/")}
    checkpoint = trained / "checkpoints" / "last.ckpt"
    assert test["model"]["weights"] == {"path": str(checkpoint), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert test["model"]["class"] == "kdlab.models.small_cnn.SmallCNN" and test["model"]["built_from"] == "model.student"
    assert test["model"]["parameters"] == sum(p.numel() for p in trained_student(trained).parameters())
    teacher = Path(record["teacher"]["path"])
    assert test["teacher"] == {"path": str(teacher), "sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
                               "fingerprint": record["teacher"]["fingerprint"]}
    assert test["dataset"]["preset"] == "digits" and test["dataset"]["examples"] == len(digits_test_inputs())
    digits = DigitsDataModule()
    digits.setup()
    assert val["dataset"]["examples"] == len(digits.split_dataset("val")) and (test["split"], val["split"]) == ("test", "val")


def test_eval_on_another_dataset_gives_the_students_accuracy_there(trained: Path, data: Path) -> None:
    from test_configs import compose_train

    overrides = ["dataset=image_arrays", f"dataset.datamodule.path={data / 'ten_classes.npz'}"]
    entry = evaluate(trained, *overrides)
    assert entry["dataset"]["preset"] == "image_arrays" and entry["overrides"] == overrides
    assert entry["dataset"]["datamodule"] == "kdlab.data.image_arrays.ImageArrayDataModule"
    datamodule = instantiate(compose_train(overrides, data / "compose").dataset.datamodule)
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    inputs, labels = torch.cat([b["input"] for b in batches]), torch.cat([b["label"] for b in batches])
    with torch.no_grad():
        accuracy = (trained_student(trained)(inputs).argmax(-1) == labels).double().mean().item()
    assert entry["dataset"]["examples"] == len(labels)
    assert entry["metrics"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    other = evaluate(trained, "dataset.datamodule.split_seed=1")  # one key of the run's own dataset
    assert other["dataset"]["preset"] == "digits" and other["dataset"]["fingerprint"] != entry["dataset"]["fingerprint"]


@pytest.mark.parametrize("model", ["student", "teacher"])
def test_state_dict_export_rebuilds_the_model_with_identical_logits(model: str, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    kdlab("export", str(trained), "--format", "state_dict", "--model", model, "--out", str(out), outputs=outputs_of(trained))
    spec = json.loads((out / "model.json").read_text())
    rebuilt = instantiate(spec["config"]).eval()
    rebuilt.load_state_dict(safetensors.torch.load_file(out / "model.safetensors"))
    record = json.loads((trained / "results.json").read_text())
    if model == "student":
        reference = trained_student(trained)
    else:
        reference = instantiate(record["config"]["model"]["teacher"]).eval()
        reference.load_state_dict(safetensors.torch.load_file(record["teacher"]["path"]))
        assert spec["weights"]["fingerprint"] == record["teacher"]["fingerprint"]
    inputs = digits_test_inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(inputs), reference(inputs))
    assert spec["built_from"] == f"model.{model}" and spec["class"] == "kdlab.models.small_cnn.SmallCNN"


def test_torchscript_export_gives_the_students_logits_without_kdlab(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "script"
    kdlab("export", str(trained), "--format", "torchscript", "--out", str(out), outputs=outputs_of(trained))
    scripted = torch.jit.load(out / "model.pt")
    inputs = digits_test_inputs()
    with torch.no_grad():
        assert torch.equal(scripted(inputs), trained_student(trained)(inputs))
        assert torch.equal(scripted(inputs[:5]), trained_student(trained)(inputs[:5]))
    assert json.loads((out / "model.json").read_text())["input_shape"] == [1, 8, 8]
    assert not list(tmp_path.glob(".*.tmp")), "the staging directory is left"


def reliability_rows() -> list[tuple[str, str]]:
    """`(command, message)` of every row of docs/reliability.md's table of `kdlab eval` and `kdlab export`."""
    section = DOC.read_text().split("## kdlab eval and kdlab export: their bad inputs", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5 and cells[2].startswith("`kdlab"):
            rows.append((cells[2].strip("`").replace("\\|", "|"), cells[4].strip("`").replace("\\|", "|")))
    return rows


ROWS = reliability_rows()


@pytest.mark.parametrize(("command", "expected"), ROWS, ids=[command for command, _ in ROWS])
def test_each_documented_bad_input_is_one_line_and_exit_status_1(command: str, expected: str, trained: Path, data: Path) -> None:
    def filled(text: str) -> str:
        return text.replace("<run>", str(trained)).replace("<data>", str(data))

    result = kdlab(*filled(command).split()[1:], outputs=outputs_of(trained), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [filled(expected)]
    assert not (data / "no_checkpoint" / "eval.json").exists()


def test_the_table_has_a_row_for_every_kind_of_bad_input() -> None:
    commands = " ".join(command for command, _ in ROWS)
    for needed in ("<data>/not_a_run", "<data>/no_checkpoint", "--format onnx", "--format hf", "three_classes.npz", "split=train"):
        assert needed in commands, needed


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A one-epoch `+method=scratch` run of a tiny local BERT classifier (one layer) on MRPC-shaped parquet files."""
    root = tmp_path_factory.mktemp("bert")
    bert, files = save_bert(root / "bert", bert_tokenizer(root / "tokenizer")), write_glue_pairs(root / "data")
    kdlab("train", "+method=scratch", "model=bert_base_to_bert6", f"model.student.name_or_path={bert}", f"model.teacher.name_or_path={bert}",
          "model.student.num_hidden_layers=1", "dataset=glue_mrpc", "dataset.datamodule.path=parquet",
          f"dataset.datamodule.data_files={{train:{files['train']},validation:{files['validation']}}}", "dataset.batch_size=8",
          "trainer.limit_train_batches=2", *FAST, outputs=root / "outputs")
    return run_dir_of(root / "outputs"), bert


def test_hf_export_of_a_classifier_student_loads_with_transformers_alone(classifier: tuple[Path, str], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdlab.models.hf import sequence_classifier

    run, bert = classifier
    out = tmp_path / "hf"
    kdlab("export", str(run), "--format", "hf", "--out", str(out), outputs=outputs_of(run))
    exported, tokenizer = AutoModelForSequenceClassification.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    reference = sequence_classifier(bert, num_labels=2, num_hidden_layers=1)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    batch = tokenizer(["the film was great", "the sky is grey"], ["a dull and boring plot", "dogs bark at night"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(exported(**batch).logits, reference.eval()(dict(batch)))
    assert json.loads((out / "model.json").read_text())["hf_class"].endswith("BertForSequenceClassification")
    record = json.loads((run / "results.json").read_text())
    entry = evaluate(run)
    assert entry["metrics"] == {k: v for k, v in record["metrics"].items() if k.startswith("test/")} and "test/f1" in entry["metrics"]
    refused = kdlab("export", str(run), "--format", "torchscript", outputs=outputs_of(run), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr  # above the line: transformers' loading bars
    assert refused.stderr.strip().splitlines()[-1] == (
        "kdlab: --format torchscript traces models of one image tensor, but the student (kdlab.models.hf.SequenceClassifier) takes "
        "a dict of input_ids, token_type_ids, attention_mask: use --format hf or --format state_dict")
    no_teacher = kdlab("export", str(run), "--format", "hf", "--model", "teacher", outputs=outputs_of(run), check=False)
    assert no_teacher.returncode == 1
    assert no_teacher.stderr.strip().splitlines() == [f"kdlab: {run} has no teacher (+method=scratch trains one model): use --model student"]
