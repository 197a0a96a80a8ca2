"""Token-level KD (`TokenKD`) against plain float64 references; masking; chunked and fused paths."""

import pytest
import torch

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.token_kd import TokenKD

B, L, V, H = 3, 7, 11, 5


def reference_divergence(name: str, p: torch.Tensor, q: torch.Tensor, param: float) -> torch.Tensor:
    """One position's divergence between probability vectors, written out."""
    if name == "fkl":
        return (p * (p / q).log()).sum()
    if name == "rkl":
        return (q * (q / p).log()).sum()
    if name == "gjsd":
        m = param * p + (1 - param) * q
        return param * (p * (p / m).log()).sum() + (1 - param) * (q * (q / m).log()).sum()
    if name == "skl":
        return (p * (p / (param * p + (1 - param) * q)).log()).sum()
    if name == "tvd":
        return 0.5 * (p - q).abs().sum()
    raise AssertionError(name)


def reference_loss(student, teacher, labels, name, param, kd_ratio, temperature):
    """Loop over (b, t): position t predicts labels[t+1]; prompt/padding labels (-100) are skipped."""
    kd, ce, count = 0.0, 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            p = torch.softmax(teacher[b, t] / temperature, -1)
            q = torch.softmax(student[b, t] / temperature, -1)
            kd = kd + reference_divergence(name, p, q, param)
            ce = ce - torch.log_softmax(student[b, t], -1)[y]
            count += 1
    return kd_ratio * temperature**2 * kd / count + (1 - kd_ratio) * ce / count


def make_batch(dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(B, L, V, generator=generator, dtype=dtype)).requires_grad_()
    teacher = 3 * torch.randn(B, L, V, generator=generator, dtype=dtype)
    labels = torch.randint(V, (B, L), generator=generator)
    labels[:, :3] = -100  # prompt
    labels[1, 5:] = -100  # padding
    return student, teacher, labels


DIVERGENCES = [("fkl", {}, 0.0), ("rkl", {}, 0.0), ("gjsd", {"beta": 0.5}, 0.5), ("skl", {"alpha": 0.1}, 0.1), ("tvd", {}, 0.0)]


@pytest.mark.parametrize(("name", "params", "param"), DIVERGENCES)
def test_token_kd_matches_float64_reference(name, params, param) -> None:
    student, teacher, labels = make_batch()
    objective = TokenKD(get(name, **params), kd_ratio=0.7, temperature=2.0, chunk_size=None, fused=False)
    loss, logs = objective({"logits": student, "teacher_logits": teacher}, {"labels": labels})
    (grad,) = torch.autograd.grad(loss, student)
    expected = reference_loss(student, teacher, labels, name, param, 0.7, 2.0)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert logs["tokens"] == (labels[:, 1:] != -100).sum()


def test_prompt_and_padding_positions_contribute_nothing() -> None:
    """Perturbing the logits at positions whose next label is -100 changes neither loss nor gradient elsewhere."""
    student, teacher, labels = make_batch()
    objective = TokenKD(get("js"), kd_ratio=0.5, temperature=1.0, chunk_size=None, fused=False)
    loss, _ = objective({"logits": student, "teacher_logits": teacher}, {"labels": labels})
    (grad,) = torch.autograd.grad(loss, student)
    ignored = torch.zeros(B, L, dtype=torch.bool)
    ignored[:, :-1] = labels[:, 1:] == -100
    ignored[:, -1] = True  # the last position predicts nothing
    assert (grad[ignored] == 0).all() and (grad[~ignored] != 0).any()
    noisy_student = (student.detach() + 50 * torch.randn(B, L, V, dtype=torch.float64) * ignored[..., None]).requires_grad_()
    noisy_teacher = teacher + 50 * torch.randn(B, L, V, dtype=torch.float64) * ignored[..., None]
    perturbed, _ = objective({"logits": noisy_student, "teacher_logits": noisy_teacher}, {"labels": labels})
    torch.testing.assert_close(perturbed, loss, rtol=0, atol=0)


@pytest.mark.parametrize("kd_ratio", [1.0, 0.3, 0.0])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_and_fused_equal_plain(kd_ratio: float, dtype: torch.dtype, tolerance: float) -> None:
    """Same value and gradients (hidden states and LM-head weights) for the plain, chunked and fused losses."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(B, L, H, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=generator, dtype=dtype).requires_grad_()
    bias = torch.randn(V, generator=generator, dtype=dtype).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(B, L, 2 * H, generator=generator, dtype=dtype), torch.randn(V, 2 * H, generator=generator, dtype=dtype)
    _, _, labels = make_batch()
    batch = {"labels": labels}
    divergence = get("srkl", alpha=0.1)

    def run(objective: TokenKD) -> tuple[torch.Tensor, ...]:
        if objective.fused:
            outputs = {"hidden": hidden, "head": (weight, bias), "teacher_hidden": teacher_hidden, "teacher_head": (teacher_weight, None)}
        else:
            outputs = {"logits": hidden @ weight.T + bias, "teacher_logits": teacher_hidden @ teacher_weight.T}
        loss, logs = objective(outputs, batch)
        return loss, logs["ce"], logs["kd"], *torch.autograd.grad(loss, (hidden, weight, bias))

    def token_kd(chunk_size: int | None, fused: bool) -> TokenKD:
        return TokenKD(divergence, kd_ratio=kd_ratio, temperature=1.0, chunk_size=chunk_size, fused=fused)

    plain = run(token_kd(None, False))
    for objective in (token_kd(4, False), token_kd(4, True), token_kd(None, True)):
        for got, expected in zip(run(objective), plain):
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_batch_level_divergence_cannot_be_chunked() -> None:
    with pytest.raises(ConfigError, match="divergence=sinkhorn couples all positions.*objective.chunk_size=null"):
        TokenKD(get("sinkhorn"), kd_ratio=1.0, temperature=1.0, chunk_size=128, fused=False)
    TokenKD(get("sinkhorn"), kd_ratio=1.0, temperature=1.0, chunk_size=None, fused=False)  # unchunked, it is allowed
    with pytest.raises(ConfigError, match="objective.kd_ratio"):
        TokenKD(get("fkl"), kd_ratio=1.5, temperature=1.0, chunk_size=None, fused=False)
