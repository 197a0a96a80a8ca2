"""MiniPLM's difference sampling: the per-instance score against a float64 reference, the kept fraction
and order, the refined corpus on the oracle (junk dropped) and on instruction files, end to end."""

import json
from pathlib import Path

import pytest
import torch
from test_configs import compose_train
from test_lm_distill import files, overrides  # noqa: F401 (the tiny tokenizer/models/jsonl fixture)
from test_oracle import ORACLE, TEACHER
from transformers import GPT2Config, GPT2LMHeadModel

from kdlab.data.miniplm import difference_sample, difference_scores, instance_nll
from kdlab.data.oracle import OracleDataModule
from kdlab.errors import ConfigError
from kdlab.modules.difference_sampling import SCORES_FILE, SUMMARY_FILE, DifferenceSampling
from kdlab.run import build_objective, run


def test_kept_fraction_and_order() -> None:
    """int(ratio · N) instances with the highest scores, back in corpus order; ties keep the earlier one."""
    scores = torch.tensor([0.3, -1.0, 2.0, 0.3, 0.9, -0.2, 0.3, 5.0, -3.0, 0.0])
    for ratio in (0.5, 0.3, 1.0, 0.15):
        kept = difference_sample(scores, ratio)
        n = int(ratio * len(scores))
        ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))  # brute force, earlier index first on ties
        assert kept.tolist() == sorted(ranked[:n])
    assert difference_sample(scores, 0.5).tolist() == [0, 2, 3, 4, 7]  # 0.3 at 0, 3 and 6: the first two are kept
    with pytest.raises(ValueError, match="keep_ratio"):
        difference_sample(scores, 0.0)


def test_instance_nll_and_score_match_a_float64_reference() -> None:
    """The score is MiniPLM's `small_scores - large_scores` of per-instance mean token losses over the loss mask."""
    torch.manual_seed(0)
    models = [GPT2LMHeadModel(GPT2Config(vocab_size=9, n_positions=8, n_layer=1, n_embd=8, n_head=2)).eval() for _ in range(2)]
    ids = torch.randint(9, (4, 6))
    labels = ids.clone()
    labels[:, :2] = -100           # prompt
    labels[1, 4:] = -100           # padding
    mask = (labels != -100).long() | (torch.arange(6) < 2).long()
    batches = [{"input_ids": ids[:3], "attention_mask": mask[:3], "labels": labels[:3], "index": torch.tensor([2, 0, 3])},
               {"input_ids": ids[3:], "attention_mask": mask[3:], "labels": labels[3:], "index": torch.tensor([1])}]
    teacher, reference = models
    teacher_nll, reference_nll = (instance_nll(model, batches, 9, 4) for model in models)

    def plain(model, row):  # -(1/|y|) Σ_t log p(y_t | y_<t), t over the scored labels, logits at t-1, float64
        with torch.no_grad():
            logits = model(input_ids=ids[row : row + 1], attention_mask=mask[row : row + 1]).logits[0].double()
        terms = [-torch.log_softmax(logits[t - 1], -1)[labels[row, t]] for t in range(1, 6) if labels[row, t] != -100]
        return sum(terms) / len(terms)

    order = [2, 0, 3, 1]  # instance index of each row
    for row, index in enumerate(order):
        torch.testing.assert_close(teacher_nll[index], plain(teacher, row))
        torch.testing.assert_close(difference_scores(teacher_nll, reference_nll)[index], plain(reference, row) - plain(teacher, row))


def test_the_oracle_corpus_keeps_the_selection_and_drops_junk(tmp_path: Path) -> None:
    data = OracleDataModule(ORACLE, TEACHER, {"train": 40, "val": 4, "test": 4}, responses="oracle", noise=0.25, batch_size=4)
    data.setup("fit")
    assert int(data.noisy.sum()) == 10
    data.select_train([1, 5, 7])
    assert sorted(int(i) for batch in data.train_dataloader() for i in batch["index"]) == [1, 5, 7]
    online = OracleDataModule(ORACLE, TEACHER, {"train": 4, "val": 4, "test": 4}, online=True)
    with pytest.raises(ConfigError, match="dataset=oracle"):
        online.select_train([0])


def miniplm_oracle(tmp_path: Path, *extra: str) -> list[str]:
    spec = ",".join(f"{key}:{value}" for key, value in ORACLE.items())
    teacher = ",".join(f"{key}:{value}" for key, value in TEACHER.items())
    return [
        "experiment=miniplm_oracle", f"dataset.datamodule.oracle={{{spec}}}", f"dataset.datamodule.teacher={{{teacher}}}",
        "dataset.datamodule.prompts={train:32,val:8,test:8}", "dataset.batch_size=8", f"model.reference.reference={{{teacher}}}",
        "module.sequence_samples=4", "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=csv", "~callbacks.progress_bar",
        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", *extra,
    ]


def test_miniplm_on_the_oracle_corpus_trains_on_the_kept_half(tmp_path: Path) -> None:
    metrics = run(compose_train(miniplm_oracle(tmp_path), tmp_path))
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    scores = torch.load(tmp_path / SCORES_FILE)
    assert summary["instances"] == 32 and summary["kept"] == 16 == int(scores["kept"].sum())
    assert scores["score"][scores["kept"]].min() >= scores["score"][~scores["kept"]].max()
    torch.testing.assert_close(scores["score"], scores["reference_nll"] - scores["teacher_nll"])
    assert summary["noise_all"] == pytest.approx(0.1875) and summary["noise_kept"] <= summary["noise_all"]
    for name in ("miniplm/kept_fraction", "miniplm/oracle_nll_kept", "test/oracle_fkl", "test/golden_fkl", "train/ce"):
        assert name in metrics, name
    assert metrics["miniplm/kept_fraction"] == 0.5
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["method"] == "miniplm" and record["objective"]["arguments"]["kd_ratio"] == 0.0


def test_miniplm_on_instruction_files(files: dict, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    reference = f"+model.reference={{_target_:kdlab.models.hf.causal_lm,name_or_path:{files['student']}}}"
    cfg = compose_train(["+method=miniplm", *overrides(files, tmp_path), reference, "callbacks.difference_sampling.batch_size=2"], tmp_path)
    metrics = run(cfg)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["instances"] == 2 and summary["kept"] == 1 and metrics["miniplm/kept"] == 1  # 4 train rows, 2 carved for validation
    assert "test/rougeL" in metrics and "noise_all" not in summary and "oracle_nll_all" not in summary


def test_miniplm_without_a_reference_says_what_to_set(tmp_path: Path) -> None:
    cfg = compose_train(["+method=miniplm"], tmp_path)
    assert cfg.callbacks.difference_sampling.reference is None
    with pytest.raises(ConfigError, match="model.reference"):
        DifferenceSampling(reference=None, keep_ratio=0.5, batch_size=4)
    objective, _ = build_objective(cfg, "miniplm")  # the loss is plain LM training: the token-mean CE alone
    assert objective.kd_ratio == 0.0
