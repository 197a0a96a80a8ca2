"""ABKD for language models: the abkd_lm preset's loss is ABKD's `ab_div` (ghwang-s/abkd
distillation_llm/distillm/losses.py, general case) with kd_ratio 1, token mean over response tokens."""

from pathlib import Path

import pytest
import torch
from test_configs import compose_train

from kdlab.run import build_objective

B, L, V = 2, 6, 7


def ab_div_reference(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """ABKD's formula written out: per position -1/(αβ) Σ_c [p^α q^β - α/(α+β) p^(α+β) - β/(α+β) q^(α+β)],
    position t scored by labels[t+1] != -100, summed and divided by the number of scored positions."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1] - 1):
            if labels[b, t + 1] == -100:
                continue
            p, q = torch.softmax(teacher[b, t], -1), torch.softmax(student[b, t], -1)
            terms = p**alpha * q**beta - alpha / (alpha + beta) * p ** (alpha + beta) - beta / (alpha + beta) * q ** (alpha + beta)
            total = total - terms.sum() / (alpha * beta)
            count += 1
    return total / count


@pytest.mark.parametrize(("overrides", "alpha", "beta"), [([], 0.2, 0.7), (["divergence.alpha=0.1", "divergence.beta=0.8"], 0.1, 0.8)])
def test_abkd_lm_is_the_papers_loss(overrides: list[str], alpha: float, beta: float, tmp_path: Path) -> None:
    cfg = compose_train(["+method=abkd_lm", *overrides], tmp_path)
    objective, record = build_objective(cfg, "abkd_lm")
    assert record["divergence"] == "ab" and record["divergence_params"] == {"alpha": alpha, "beta": beta}
    assert cfg.module.source._target_.endswith("DatasetResponses") and cfg.optimizer.lr == 5e-4 and cfg.trainer.max_epochs == 20
    generator = torch.Generator().manual_seed(0)
    student = (2 * torch.randn(B, L, V, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = 2 * torch.randn(B, L, V, generator=generator, dtype=torch.float64)
    labels = torch.randint(V, (B, L), generator=generator)
    labels[:, :2] = -100
    labels[0, 5:] = -100
    loss, logs = objective({"logits": student, "teacher_logits": teacher}, {"labels": labels})
    expected = ab_div_reference(student, teacher, labels, alpha, beta)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, student)
    (expected_grad,) = torch.autograd.grad(ab_div_reference(student, teacher, labels, alpha, beta), student)
    torch.testing.assert_close(grad, expected_grad)
    assert logs["tokens"] == 7
