"""docs/examples.md run as written: each ```bash block after `<!-- tested: NAME -->` is expanded by bash with its
variables set to tiny files in the real formats written here, every `kdlab` line of it run through the CLI (with
`TINY` appended to each `kdlab train`), and the runs and the report it leaves checked."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pandas as pd
from conftest import kdlab
from image_files import labelled_arrays, write_arrays
from lm_files import bert_tokenizer, gpt2_tokenizer, save_bert, save_gpt2
from test_preference_data import ROWS, write_jsonl
from text_files import CLASSES, TOPICS, write_corpus

DOC = Path(__file__).parents[1] / "docs" / "examples.md"
# The one place where the documented commands are made CPU-tiny: appended to every `kdlab train` of a block.
TINY = {
    "images": ["trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none"],
    "text": ["trainer.max_epochs=1", "teacher.max_epochs=1", "logger=none"],
    "preferences": ["trainer.max_steps=2", "module.samples=4", "module.max_new_tokens=4", "dataset.batch_size=2",
                    "dataset.datamodule.max_prompt_length=16", "dataset.datamodule.max_length=32", "logger=none"],
}


def commands(name: str, files: dict[str, Path], cwd: Path) -> tuple[str, list[list[str]]]:
    """The tested block `name` of the doc run by bash with its variables but `OUT` set to `files` and `kdlab` a
    function that prints its arguments, in `cwd`: the block's `OUT` and each `kdlab` line's arguments, as bash passes them."""
    (text,) = re.findall(rf"<!-- tested: {name} -->\n```bash\n(.*?)```", DOC.read_text(), re.S)
    variables = dict(re.findall(r"^([A-Z_]+)=(\S+)", text, re.M))
    assert set(variables) == {*files, "OUT"}, "the doc's variables and the test's files must name the same things"
    script = re.sub(r"^([A-Z_]+)=\S+", lambda match: f"{match[1]}={shlex.quote(str(files.get(match[1], variables[match[1]])))}", text, flags=re.M)
    printed = subprocess.run(["bash", "-euc", 'kdlab() { printf "%s\\0" "$@"; printf "\\n\\0"; }\n' + script],
                             cwd=cwd, capture_output=True, text=True, check=True).stdout
    return variables["OUT"], [command.split("\0")[:-1] for command in printed.split("\n\0")[:-1]]


def run_block(name: str, files: dict[str, Path], outputs: Path) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Run every `kdlab` line of block `name` (its variables but `OUT` set to `files`, `TINY` appended to each
    `kdlab train`) from the directory above `outputs`; return the block's `OUT` there and the results."""
    out, lines = commands(name, files, outputs.parent)
    assert lines, name
    results = [kdlab(*args, *(TINY[name] if args[0] == "train" else []), outputs=outputs, timeout=300) for args in lines]
    return outputs.parent / out, results


def records(root: Path) -> dict[tuple[str, str | None], dict]:
    """Every results.json under `root`, by (method, divergence); each completed, no (method, divergence) twice."""
    found = [json.loads(path.read_text()) | {"dir": path.parent} for path in root.rglob("results.json")]
    assert all(record["status"] == "completed" for record in found)
    by_cell = {(record["method"], record["divergence"]): record for record in found}
    assert len(by_cell) == len(found)
    return by_cell


def report_cells(root: Path, metric: str, cells: dict[tuple[str, str | None], dict]) -> None:
    """The report's table.csv has exactly one cell per run, its mean the run's `metric`; its printout names each cell."""
    table = pd.read_csv(root / "report" / "table.csv", keep_default_na=False)
    assert sorted(zip(table.method, table.divergence)) == sorted((method, divergence or "none") for method, divergence in cells)
    for row in table.itertuples():
        record = cells[(row.method, None if row.divergence == "none" else row.divergence)]
        assert row.n == 1 and float(row.mean) == record["metrics"][metric]


def test_own_images_kd_fkl_rkl_js_against_the_teacher_and_scratch(tmp_path: Path, outputs: Path) -> None:
    digits = write_arrays(tmp_path / "data" / "digits.npz", *labelled_arrays(30, (8, 8)))  # 3 classes of 10 grey 8x8 images
    out, (*_, report) = run_block("images", {"DATA": digits}, outputs)
    cells = records(out)
    assert set(cells) == {("kd", "fkl"), ("kd", "rkl"), ("kd", "js"), ("teacher", None), ("scratch", None)}
    assert {cells[("kd", d)]["dir"].parent.name for d in ("fkl", "rkl", "js")} == {"kd"}
    teacher = cells[("teacher", None)]
    for divergence in ("fkl", "rkl", "js"):
        kd = cells[("kd", divergence)]
        assert kd["objective"]["arguments"]["divergence"]["name"] == divergence
        assert kd["teacher"]["fingerprint"] == teacher["teacher"]["fingerprint"]  # one teacher, trained once, shared
        assert kd["metrics"]["test/teacher_acc"] == teacher["metrics"]["test/acc"]
        assert kd["config"]["dataset"]["num_classes"] == 3 and kd["config"]["dataset"]["in_channels"] == 1
    assert cells[("scratch", None)]["teacher"] is None and cells[("scratch", None)]["ignored"] == ["teacher.max_epochs"]
    report_cells(out, "test/acc", cells)
    assert all(name in report.stdout for name in ("kd", "teacher", "scratch", "fkl", "rkl", "js"))


def test_own_text_corpus_with_a_local_encoder_pair(tmp_path: Path, outputs: Path) -> None:
    tokenizer = bert_tokenizer(tmp_path / "tokenizer", [text for texts in TOPICS.values() for text in texts])
    files = {"DATA": Path(write_corpus(tmp_path / "data" / "news.csv")),
             "TEACHER": Path(save_bert(tmp_path / "models" / "teacher", tokenizer)),
             "STUDENT": Path(save_bert(tmp_path / "models" / "student", tokenizer, hidden_size=8, num_hidden_layers=1))}
    out, _ = run_block("text", files, outputs)
    cells = records(out)
    assert set(cells) == {("kd", "fkl"), ("teacher", None), ("scratch", None)}
    mapping = {str(i): name for i, name in enumerate(CLASSES)}
    for record in cells.values():
        assert json.loads((record["dir"] / "labels.json").read_text()) == mapping
        assert record["config"]["dataset"]["labels"] == CLASSES
    assert cells[("kd", "fkl")]["metrics"]["test/teacher_acc"] == cells[("teacher", None)]["metrics"]["test/acc"]
    assert cells[("kd", "fkl")]["config"]["model"]["student"]["name_or_path"] == str(files["STUDENT"])
    report_cells(out, "test/acc", cells)


def test_own_preference_jsonl_with_a_local_causal_lm(tmp_path: Path, outputs: Path) -> None:
    pairs = tmp_path / "data" / "pairs"
    pairs.mkdir(parents=True)
    for split in ("train", "test"):
        write_jsonl(pairs / f"{split}.jsonl", ROWS)
    tokenizer = gpt2_tokenizer(tmp_path / "tokenizer", [value for row in ROWS for value in row.values()])
    policy = Path(save_gpt2(tmp_path / "models" / "policy", tokenizer, n_layer=1, n_embd=16))
    out, _ = run_block("preferences", {"PAIRS": pairs, "POLICY": policy}, outputs)
    cells = records(out)
    assert set(cells) == {("dpo", "rkl"), ("fdpo", "js")}
    assert {key: record["dir"].name for key, record in cells.items()} == {("dpo", "rkl"): "dpo", ("fdpo", "js"): "fdpo-js"}
    for record in cells.values():
        assert (record["dir"] / "policy" / "config.json").is_file() and 0 <= record["metrics"]["test/accuracy"] <= 1
        assert record["metrics"]["test/length"] <= 4  # the tiny sampling settings reached the module
    report_cells(out, "test/accuracy", cells)
