"""Every bad input of the table in docs/reliability.md gets exactly its documented line, before any work.

The table is the test's data: each row's command is run as `kdlab train` runs it (its overrides
composed by Hydra, `resume=true` looked up as on the command line, then `kdlab.run.run`), in this
process, and the error must print as the row's message, on one line; no teacher may have been trained
and no checkpoint written. `<data>` in a row is a directory of tiny files this module writes (a
tokenizer, a policy, preference files, checkpoints, image files), `<outputs>` the run's outputs directory.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from kdlab.errors import KdlabError
from kdlab.train import job, method_overrides, resume_overrides
from kdlab.validate import validate

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def documented_rows() -> list[tuple[str, str, str]]:
    """`(command, reported by, message)` of every row of the bad-input table."""
    section = DOC.read_text().split("## Bad inputs", 1)[1].split("\n## ", 1)[0]
    prefs = re.search(r"`<prefs>` for `([^`]+)`", section).group(1).replace("\n", " ")
    rows = []
    for line in section.splitlines():
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5 and cells[2].startswith("`"):
            rows.append((" ".join(cells[2].strip("`").replace("<prefs>", prefs).split()), cells[3], cells[4].strip("`")))
    return rows


ROWS = documented_rows()
PREFERENCES = [{"prompt": f"question {i} is what", "chosen": f"a good answer {i}", "rejected": f"a poor reply {i}"} for i in range(8)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def write_data(root: Path) -> Path:
    """The files the table's `<data>` rows name, written in `root`."""
    from lm_files import gpt2_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer(root / "tokenizer", [value for row in PREFERENCES for value in row.values()])
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).save_pretrained(root / "policy")

    def jsonl(name: str, rows: list[dict]) -> None:
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    jsonl("pairs.jsonl", PREFERENCES)
    jsonl("row_without_rejected.jsonl", [row if i != 3 else {k: v for k, v in row.items() if k != "rejected"} for i, row in enumerate(PREFERENCES)])
    jsonl("without_rejected.jsonl", [{k: v for k, v in row.items() if k != "rejected"} for row in PREFERENCES])
    (root / "empty.jsonl").write_text("")
    (root / "not_json.jsonl").write_text(json.dumps(PREFERENCES[0]) + "\n{not json\n")
    write_bad_images(root)
    write_bad_texts(root / "text")
    torch.save({"weight": torch.zeros(2)}, root / "weights.ckpt")
    (root / "truncated.ckpt").write_bytes((root / "weights.ckpt").read_bytes()[:100])
    return root


def write_bad_images(root: Path) -> None:
    """Bad image data for the `dataset=image_folder|image_arrays` rows: `<data>/images/{empty,one,sizes,channels}`, `<data>/labels.npz`."""
    from image_files import labelled_arrays, random_images, write_arrays, write_class_folders
    from PIL import Image

    (root / "images" / "empty" / "cat").mkdir(parents=True)
    write_class_folders(root / "images" / "one", classes=("cat",))
    for name, odd in (("sizes", (8, 8, 3)), ("channels", (6, 6))):
        Image.fromarray(random_images(1, odd)[0]).save(write_class_folders(root / "images" / name) / "dog" / "odd.png")
    write_arrays(root / "labels.npz", *labelled_arrays())


def write_bad_texts(root: Path) -> None:
    """Bad text data for the `dataset=text_classification` rows, in `<data>/text/`."""
    from text_files import corpus_rows, write_corpus

    rows = corpus_rows()
    write_corpus(root / "topics.csv", rows)
    write_corpus(root / "no_text.csv", [{"body": row["text"], "label": row["topic"]} for row in rows])
    write_corpus(root / "no_label.jsonl", rows)
    write_corpus(root / "one_class.csv", [{"text": row["text"], "label": "sport"} for row in rows])
    write_corpus(root / "ids.csv", [{"text": row["text"], "label": i % 5} for i, row in enumerate(rows)])
    (root / "empty.csv").write_text("")
    (root / "topics.xlsx").write_bytes(b"PK")
    (root / "no_files" / "sport").mkdir(parents=True)


def compose_run(overrides: list[str], run_dir: Path) -> DictConfig:
    """The job config of `kdlab train OVERRIDES`, with its run directory `run_dir`, as Hydra gives it to the job."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kdlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def message_of(command: str, data: Path, outputs: Path) -> str:
    """The line `command` (`[VAR=value ...] kdlab train OVERRIDES`) prints, run in this process."""
    words = command.replace("<data>", str(data)).split()
    env = dict(word.split("=", 1) for word in words[: words.index("kdlab")])
    overrides = method_overrides(words[words.index("train") + 1 :])
    saved = {name: os.environ.get(name) for name in [*env, "KDLAB_OUTPUTS"]}
    os.environ.update({**env, "KDLAB_OUTPUTS": str(outputs)})
    try:
        resume_overrides(overrides)  # as `kdlab train` does before Hydra starts
        job(compose_run(overrides, outputs / "run"))
    except KdlabError as error:
        return f"kdlab: {error}"
    except HydraException as error:
        return f"Hydra: {error}"
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    raise AssertionError(f"{command} ran without an error")


@pytest.mark.parametrize(("command", "by", "expected"), ROWS, ids=[command for command, _, _ in ROWS])
def test_each_documented_bad_input_prints_its_line_before_any_work(command: str, by: str, expected: str, data: Path, tmp_path: Path) -> None:
    if "<read-only>" in command:
        pytest.skip("run on a read-only file system by test_a_read_only_output_directory_is_one_line")
    if "accelerator=gpu" in command or "hardware=gpu" in command:
        if torch.cuda.is_available():
            pytest.skip("a machine with a GPU accepts it")
    outputs = tmp_path / "outputs"
    message = message_of(command, data, outputs)
    expected = expected.replace("<data>", str(data)).replace("<outputs>", str(outputs))
    if by == "Hydra":
        assert message.startswith("Hydra: ") and expected in message, message
        return
    assert message == expected
    assert not list(outputs.glob("teachers/*/manifest.json")), "a teacher was trained"
    assert not list(outputs.rglob("*.ckpt")), "training started"


def test_the_table_covers_what_the_issue_found() -> None:
    commands = " ".join(command for command, _, _ in ROWS)
    for case in ("trainer.max_epochs=abc", "seed=abc", "objective.temperature=abc", "WANDB_MODE=", "model=cifar_resnet56_to_resnet20",
                 "row_without_rejected", "empty.jsonl", "oc.env", "truncated.ckpt", "<read-only>"):
        assert case in commands, case
    assert len(ROWS) >= 40


def test_every_preset_combination_that_is_meant_to_work_passes_validation(tmp_path: Path) -> None:
    """No false alarm: each method with a dataset and model pair of its kind, and every experiment, validates."""
    from kdlab.methods import catalogue
    from kdlab.validate import dataset_batches

    kinds = dataset_batches()
    pairs = {"labelled": "model=digits_cnn", "text": "model=gpt2_xl_to_gpt2", "preferences": "model=hf_policy"}
    for method in catalogue():
        if method.regime.batches is None:  # the on-policy regime reads prompts or pairs: its experiments below
            continue
        dataset = next(name for name, kind in kinds.items() if kind == method.regime.batches)
        overrides = [f"+method={method.name}", f"dataset={dataset}", pairs[method.regime.batches]]
        validate(compose_run(method_overrides(overrides), tmp_path), method.name)
    for path in sorted((Path(__file__).resolve().parents[1] / "kdlab" / "conf" / "experiment").glob("*.yaml")):
        cfg = compose_run([f"experiment={path.stem}", "trainer.accelerator=cpu", "trainer.devices=1"], tmp_path)
        validate(cfg, HydraConfig.get().runtime.choices["method"])


def _mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _mount_namespaces(), reason="needs root and mount namespaces (unshare -m)")
def test_a_read_only_output_directory_is_one_line(tmp_path: Path) -> None:
    from conftest import KDLAB

    (row,) = [(command, expected) for command, _, expected in ROWS if "<read-only>" in command]
    mount = tmp_path / "read-only"
    mount.mkdir()
    outputs = mount / "outputs"
    command = row[0].replace("<read-only>", str(outputs)).split()
    script = f'mount -t tmpfs -o ro,size=16k tmpfs "{mount}" && exec "$@"'
    env = {**os.environ, **dict(word.split("=", 1) for word in command[: command.index("kdlab")])}
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *KDLAB, *command[command.index("kdlab") + 1 :]],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1
    expected = re.escape(row[1].replace("<read-only>", str(outputs))).replace("<timestamp>", r"[\d_-]+")
    assert re.fullmatch(expected, result.stderr.strip()), result.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    from conftest import kdlab

    outputs = tmp_path / "outputs"
    plain = kdlab("train", "seed=abc", "logger=none", outputs=outputs, check=False)
    assert plain.returncode == 1 and plain.stderr.strip().splitlines() == ["kdlab: seed='abc' must be an integer"]
    (log,) = outputs.glob("runs/*/*/train.log")
    assert "Traceback" in log.read_text() and "ConfigError: seed='abc' must be an integer" in log.read_text()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        full = kdlab("train", "seed=abc", "logger=none", outputs=outputs, check=False)
    finally:
        del os.environ["HYDRA_FULL_ERROR"]
    assert full.returncode == 1 and "Traceback" in full.stderr and "kdlab.errors.ConfigError: seed='abc' must be an integer" in full.stderr


def test_an_unresolvable_value_is_recorded_as_written(data: Path, tmp_path: Path) -> None:
    """The failure handler records what it can: the run's record names the error and keeps the value as written."""
    outputs = tmp_path / "outputs"
    message = message_of("kdlab train paths.data_dir=${oc.env:KDLAB_NO_SUCH_VARIABLE}", data, outputs)
    record = json.loads((outputs / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["error"] == "ConfigError: " + message.removeprefix("kdlab: ")
    assert record["config"]["paths"]["data_dir"] == "${oc.env:KDLAB_NO_SUCH_VARIABLE}" and record["method"] == "kd"
