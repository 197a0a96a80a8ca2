"""Causal-LM distillation end to end on tiny saved models and data files: every preset, masks, sources, checks."""

import json
from pathlib import Path

import pytest
import torch
from lm_files import instruction_text, gpt2_tokenizer, save_gpt2, write_instructions
from test_configs import compose_train

from kdlab.data.instructions import InstructionDataModule
from kdlab.divergences import get
from kdlab.models.generation import sample_responses
from kdlab.modules import LMDistillModule
from kdlab.modules.lm_sources import AdaptiveStudentResponses
from kdlab.objectives.hinton_kd import HintonKD
from kdlab.objectives.token_kd import TokenKD
from kdlab.run import run


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm")
    tokenizer = gpt2_tokenizer(root / "tokenizer", instruction_text())
    return {
        "tokenizer": tokenizer,
        "student": save_gpt2(root / "student", tokenizer, n_layer=1, n_embd=16),
        "teacher": save_gpt2(root / "teacher", tokenizer, n_layer=2, n_embd=32, extra_rows=7, seed=1),  # a padded vocabulary
        "data": write_instructions(root / "data"),
        "root": root,
    }


def overrides(files: dict, tmp_path: Path) -> list[str]:
    data = files["data"]
    return [
        "dataset=instructions_jsonl", "model=gpt2_xl_to_gpt2", f"model.teacher.name_or_path={files['teacher']}",
        f"model.student.name_or_path={files['student']}", f"dataset.datamodule.data_files={{train:{data['train']},test:{data['test']}}}",
        "dataset.datamodule.val_size=2", "dataset.batch_size=1", "dataset.datamodule.max_prompt_length=48", "dataset.datamodule.max_length=64",
        "trainer.max_steps=2", "trainer.max_epochs=1", "logger=none", "~callbacks.progress_bar",
        "module.max_new_tokens=6", "module.generation_samples=2", "module.sequence_samples=2",
        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
    ]


METHODS = {
    "lmkd": ["divergence=js", "objective.kd_ratio=0.5", "objective.chunk_size=5"],
    "gkd": ["module.source.probability=1.0", "module.source.max_new_tokens=6", "objective.fused=true", "objective.chunk_size=4"],
    "distillm": ["module.source.init_threshold=1.0", "module.source.max_new_tokens=6", "module.source.capacity=1"],
    "seqkd": ["module.source.max_new_tokens=6"],
    "abkd_lm": [],
}


@pytest.mark.parametrize("method", METHODS)
def test_preset_trains_two_steps_and_reports(method: str, files: dict, tmp_path: Path) -> None:
    cfg = compose_train([f"+method={method}", *overrides(files, tmp_path), *METHODS[method]], tmp_path)
    metrics = run(cfg)
    for name in ("train/loss", "train/kd", "train/ce", "val/nll", "val/ppl", "val/fkl", "val/proxy_fkl", "test/rougeL", "test/teacher_ppl"):
        assert name in metrics and torch.isfinite(torch.tensor(metrics[name])), name
    if method in ("gkd", "seqkd"):
        assert metrics["train/generated"] == 1.0
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "completed" and record["method"] == method
    assert (tmp_path / "student" / "config.json").is_file()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(key.startswith("teacher.") for key in checkpoint["state_dict"])


def test_loss_reads_response_tokens_only(files: dict, tmp_path: Path) -> None:
    """Labels are exactly the response (+EOS); rewriting the prompt changes inputs, never labels or the token count."""
    def module(rows: list[dict]) -> InstructionDataModule:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        data = InstructionDataModule("json", files["student"], data_files={"train": str(path), "test": str(path)},
                                     splits={"test": "test"}, val_size=1, batch_size=3)
        data.setup("fit")
        return data

    rows = [{"instruction": "Name a prime number.", "context": "", "response": "Seven is a prime number."}] * 4
    changed = [{"instruction": "Say hello politely, with the cat on the mat.", "context": "The sky is blue.", "response": "Seven is a prime number."}] * 4
    a, b = (next(iter(module(r).test_dataloader())) for r in (rows, changed))
    tokenizer = files["tokenizer"]
    response = tokenizer("Seven is a prime number.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for batch in (a, b):
        assert batch["labels"][0][batch["labels"][0] != -100].tolist() == response
        prompt_length = batch["prompt_mask"][0].sum()
        assert (batch["labels"][0, :prompt_length] == -100).all()
        assert batch["input_ids"][0, :prompt_length].tolist() == batch["prompt_ids"][0, -prompt_length:].tolist()
    assert not torch.equal(a["prompt_ids"][0], b["prompt_ids"][0][-len(a["prompt_ids"][0]):])
    objective = TokenKD(get("fkl"), kd_ratio=1.0, temperature=1.0, chunk_size=None, fused=False)
    for batch in (a, b):  # same response tokens, same logits at them -> same loss whatever the prompt
        length, vocab = batch["input_ids"].shape[1], len(tokenizer)
        start = batch["prompt_mask"][0].sum() - 1
        logits = torch.zeros(len(batch["labels"]), length, vocab)
        logits[:, start : start + len(response)] = torch.linspace(-2, 2, vocab)
        loss, logs = objective({"logits": logits, "teacher_logits": logits.flip(-1)}, batch)
        assert logs["tokens"] == 3 * len(response)
        if batch is a:
            expected = loss
    torch.testing.assert_close(loss, expected)


def test_sampled_responses_have_valid_masks(files: dict) -> None:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(files["student"])
    with torch.no_grad():  # make EOS likely so that some rows end early
        model.lm_head.weight[files["tokenizer"].eos_token_id] += 3 * model.lm_head.weight.std()
    prompts = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.manual_seed(0)
    eos = pad = files["tokenizer"].eos_token_id  # kdlab pads with EOS when a tokenizer has no pad token
    out = sample_responses(model, prompts, mask, 12, eos_token_id=eos, pad_token_id=pad, temperature=0.9)
    labels, attention = out["labels"], out["attention_mask"]
    assert (labels[:, :4] == -100).all()  # the prompt is never scored
    scored = labels != -100
    assert (attention[scored] == 1).all() and torch.equal(labels[scored], out["input_ids"][scored])
    for row in range(2):  # responses are contiguous, end at the first EOS (scored), nothing after it
        response = labels[row, 4:]
        kept = (response != -100).nonzero().flatten()
        assert len(kept) >= 1 and kept.tolist() == list(range(len(kept)))
        ends = (response[kept] == eos).nonzero().flatten().tolist()
        assert ends in ([], [len(kept) - 1])
        assert (attention[row, 4 + len(kept):] == 0).all()


def test_distillm_schedule_and_replay_buffer() -> None:
    source = AdaptiveStudentResponses(init_threshold=0.0, loss_eps=0.1, capacity=3, replay_ratio="decreasing", temperature=1.0, max_new_tokens=4)
    for nll, threshold in ((2.0, 0.0), (2.05, 0.0), (2.11, 0.1), (2.15, 0.1), (2.25, 0.2)):
        source.observe_validation(nll)
        assert source.threshold == pytest.approx(threshold)
    assert source.sampling_threshold(0.25) == pytest.approx(0.2 * 0.75)
    batch = {"input_ids": torch.tensor([[0, 1, 2], [3, 4, 5]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
             "labels": torch.tensor([[-100, -100, 2], [-100, 4, 5]])}
    source.push(batch)
    source.push(batch)
    assert len(source.buffer) == 3 and source.buffer[0]["input_ids"].tolist() == [3, 4, 5]  # FIFO
    sampled = source.sample(2)
    assert sampled["input_ids"].shape[0] == 2 and ((sampled["labels"] != -100) <= (sampled["attention_mask"] == 1)).all()


def test_mismatched_tokenizers_are_refused_with_the_first_differing_ids(files: dict, tmp_path: Path) -> None:
    other = gpt2_tokenizer(tmp_path / "other", ["completely different words here", "zebra quartz"], vocab_size=300)
    teacher = save_gpt2(tmp_path / "teacher", other, n_layer=1, n_embd=16)
    from kdlab.models.hf import causal_lm

    data = InstructionDataModule("json", files["student"], data_files=files["data"], splits={"test": "test"}, val_size=1, batch_size=2)
    token_kd = TokenKD(get("fkl"), kd_ratio=1.0, temperature=1.0, chunk_size=None, fused=False)
    with pytest.raises(ValueError, match="first differing token ids.*id \\d+"):
        LMDistillModule.check_models(data, None, causal_lm(files["student"]), causal_lm(teacher), token_kd)
    with pytest.raises(ValueError, match="TokenKD"):
        LMDistillModule.check_models(data, None, causal_lm(files["student"]), causal_lm(files["teacher"]),
                                     HintonKD(get("fkl"), temperature=1.0, ce_weight=0.0, kd_weight=1.0))
