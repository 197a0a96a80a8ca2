"""The LM teacher-output cache: tail-bin divergences against a float64 re-write, the cache's lookup,
its reuse by a second job without a teacher pass, and the settings it refuses."""

import json
from pathlib import Path

import pytest
import torch
from lm_files import gpt2_tokenizer, instruction_text, save_gpt2, write_instructions
from test_configs import compose_train

import kdlab.lm_teacher_outputs as cache_module
from kdlab.data.instructions import InstructionDataModule
from kdlab.divergences import REGISTRY, get
from kdlab.errors import ConfigError, DataError
from kdlab.lm_teacher_outputs import TeacherOutputs, check_vocabulary, compute_outputs, training_batches
from kdlab.models.hf import causal_lm, lm_forward
from kdlab.modules import LMDistillModule
from kdlab.objectives.tail_bin import tail_bin_divergence, top_k_log_probs
from kdlab.objectives.token_kd import TokenKD
from kdlab.run import run
from kdlab.validate import validate

PER_POSITION = [name for name, fn in REGISTRY.items() if not fn.batch_level]


def reference(name: str, student: torch.Tensor, teacher: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """float64 re-write: coarsen p, q to (top-k of p, one tail bin) by sorting, then the divergence's formula."""
    p, q = (teacher / temperature).softmax(-1), (student / temperature).softmax(-1)
    order = p.argsort(-1, descending=True)[:, :k]
    p_kept, q_kept = p.gather(-1, order), q.gather(-1, order)
    p_bar = torch.cat([p_kept, 1 - p_kept.sum(-1, keepdim=True)], -1)
    q_bar = torch.cat([q_kept, 1 - q_kept.sum(-1, keepdim=True)], -1)
    if name == "fkl":
        return (p_bar * (p_bar.log() - q_bar.log())).sum(-1)
    if name == "rkl":
        return (q_bar * (q_bar.log() - p_bar.log())).sum(-1)
    m = (p_bar + q_bar) / 2  # js
    return 0.5 * (p_bar * (p_bar / m).log()).sum(-1) + 0.5 * (q_bar * (q_bar / m).log()).sum(-1)


@pytest.mark.parametrize("name", ["fkl", "rkl", "js"])
@pytest.mark.parametrize("k,temperature", [(1, 1.0), (3, 1.0), (5, 2.0)])
def test_tail_bin_divergence_matches_float64_reference(name: str, k: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(k)
    student = torch.randn(6, 11, generator=generator, dtype=torch.float64).mul(2).requires_grad_()
    teacher = torch.randn(6, 11, generator=generator, dtype=torch.float64).mul(2)
    ids, logps, tail = top_k_log_probs(teacher, k, temperature)
    value = tail_bin_divergence(get(name), student, ids, logps, tail, temperature, chunk_size=4)
    expected = reference(name, student, teacher, k, temperature)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(value.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    full = get(name)(student, teacher, temperature=temperature, reduction="none")
    assert (value <= full + 1e-12).all()  # data processing: merging tokens never increases an f-divergence


def test_tail_mass_is_exact_when_the_kept_mass_is_nearly_one() -> None:
    """log p_tail from the complement's log-sum-exp, where log(1 - Σ p_S) in float32 would give -inf."""
    logits = torch.tensor([[30.0, 0.0, 0.0, -1.0]])
    _, logps, tail = top_k_log_probs(logits, 1, 1.0)
    expected = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).exp().sum().log() - logits.double().logsumexp(-1)
    torch.testing.assert_close(tail.double(), expected, rtol=1e-6, atol=0)
    assert torch.log1p(-logps.exp()).isneginf().all()  # what 1 - Σ p_S would have given


@pytest.mark.parametrize("name", PER_POSITION)
def test_full_support_is_the_full_vocabulary_divergence(name: str) -> None:
    """k = V leaves an empty tail: every per-position divergence and its gradient are the plain ones."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    value = tail_bin_divergence(get(name), student, *top_k_log_probs(teacher, 7, 1.5), 1.5)
    full = get(name)(student, teacher, temperature=1.5, reduction="none")
    torch.testing.assert_close(value, full)
    torch.testing.assert_close(torch.autograd.grad(value.sum(), student)[0], torch.autograd.grad(full.sum(), student)[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_cache")
    tokenizer = gpt2_tokenizer(root / "tokenizer", instruction_text())
    return {
        "vocab": len(tokenizer),
        "student": save_gpt2(root / "student", tokenizer, n_layer=1, n_embd=16),
        "teacher": save_gpt2(root / "teacher", tokenizer, n_layer=2, n_embd=32, extra_rows=7, seed=1),
        "data": write_instructions(root / "data"),
    }


def test_cached_rows_follow_the_batch_whatever_its_order(files: dict) -> None:
    """Looked up by `index`, the cache at k = V gives TokenKD the loss of the teacher's full logits, for a
    batch of other examples in another order than the one it was built in."""
    data = InstructionDataModule("json", files["student"], data_files=files["data"], splits={"test": "test"}, val_size=1, batch_size=2,
                                 max_prompt_length=48, max_length=64)
    data.setup("fit")
    teacher, student = causal_lm(files["teacher"]).eval(), causal_lm(files["student"])
    vocab = data.vocab_size
    tensors = compute_outputs(teacher, training_batches(data), vocab, 1.0, vocab, torch.device("cpu"))
    cached = TeacherOutputs(**tensors, record={"path": "memory"})
    batch = data.collate([data.split_dataset("train")[i] for i in (2, 0)])
    objective = TokenKD(get("js"), kd_ratio=0.5, temperature=1.0, chunk_size=3, fused=False)
    logits = lm_forward(student, batch["input_ids"], batch["attention_mask"])[..., :vocab]
    with torch.no_grad():
        teacher_logits = lm_forward(teacher, batch["input_ids"], batch["attention_mask"])[..., :vocab]
    full, _ = objective({"logits": logits, "teacher_logits": teacher_logits}, batch)
    from_cache, _ = objective({"logits": logits} | cached.lookup(batch["index"], batch["labels"]), batch)
    torch.testing.assert_close(from_cache, full, rtol=1e-5, atol=1e-6)
    other = batch["labels"].clone()
    other[0, (other[0] != -100).nonzero()[-1]] = -100  # another example: one response token fewer
    with pytest.raises(DataError, match="training example 2 has .* response tokens"):
        cached.lookup(batch["index"], other)


def overrides(files: dict, tmp_path: Path, *extra: str) -> list[str]:
    data = files["data"]
    return [
        "+method=lmkd", "dataset=instructions_jsonl", "model=gpt2_xl_to_gpt2", f"model.teacher.name_or_path={files['teacher']}",
        f"model.student.name_or_path={files['student']}", f"dataset.datamodule.data_files={{train:{data['train']},test:{data['test']}}}",
        "dataset.datamodule.val_size=1", "dataset.batch_size=2", "dataset.datamodule.max_prompt_length=48", "dataset.datamodule.max_length=64",
        "trainer.max_epochs=2", "logger=none", "~callbacks.progress_bar", "module.generation_samples=0",
        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"module.teacher_outputs_dir={tmp_path.parent / 'teacher_outputs'}",
        *extra,
    ]


def test_second_job_reads_the_cache_without_a_teacher_pass_and_resumes_exactly(files: dict, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def job(name: str, *extra: str) -> dict:
        metrics = run(compose_train(overrides(files, tmp_path / name, *extra), tmp_path / name))
        return metrics | {"record": json.loads((tmp_path / name / "results.json").read_text())["teacher_outputs"]}

    first = job("a", "module.teacher_top_k=8")
    assert first["record"]["source"] == "built" and first["record"]["top_k"] == 8 and first["record"]["examples"] == 3

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    training_forwards, steps = [], []  # per forward of a training step's outputs: whether it ran the (frozen) teacher
    outputs = LMDistillModule.model_outputs

    def counted(model, *args):
        training_forwards.append(not any(p.requires_grad for p in model.parameters()))
        return lm_forward(model, *args)

    def train_outputs(module, batch, split):
        if split != "train":
            return outputs(module, batch, split)
        steps.append(split)
        with monkeypatch.context() as patch:
            patch.setattr("kdlab.modules.lm_distill.lm_forward", counted)
            return outputs(module, batch, split)

    monkeypatch.setattr(cache_module, "compute_outputs", no_teacher)  # the next jobs of a sweep: the same teacher and data
    monkeypatch.setattr(LMDistillModule, "model_outputs", train_outputs)
    stopped = job("b", "module.teacher_top_k=8", "trainer.max_steps=2")  # stops after the first epoch
    assert stopped["record"]["source"] == "cache" and stopped["record"]["path"] == first["record"]["path"]
    assert training_forwards and not any(training_forwards)
    steps.clear()
    resumed = job("c", "module.teacher_top_k=8", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}")
    assert len(steps) == 2  # the second epoch only
    for name in ("train/loss", "train/kd", "val/nll", "val/fkl"):
        assert resumed[name] == first[name], name
    job("d", "trainer.max_steps=1")  # without the cache the teacher runs every step
    assert sum(training_forwards) == 1


@pytest.mark.parametrize("extra,message", [
    (["module.teacher_top_k=0"], "module.teacher_top_k=0 must be >= 1"),
    (["+method=gkd", "module.teacher_top_k=4"], "samples new responses"),
    (["objective.fused=true", "module.teacher_top_k=4"], "objective.fused=false"),
    (["divergence=sinkhorn", "objective.chunk_size=null", "module.teacher_top_k=4"], "couples the positions"),
])
def test_settings_the_cache_cannot_serve_are_one_line(extra: list[str], message: str, files: dict, tmp_path: Path) -> None:
    cfg = compose_train([o for o in overrides(files, tmp_path) if not (o.startswith("+method") and any(e.startswith("+method") for e in extra))]
                        + extra, tmp_path)
    method = next(o.split("=")[1] for o in [*extra, "+method=lmkd"] if o.startswith("+method"))
    with pytest.raises(ConfigError, match=message) as error:
        validate(cfg, method)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=f"larger than the vocabulary \\({files['vocab']} tokens\\)"):
        check_vocabulary(files["vocab"] + 1, files["vocab"])
