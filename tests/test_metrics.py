"""The evaluation panel against plain float64 references: accuracy, top-5, 15-bin ECE, agreement and
the teacher-student divergence panel."""

import numpy as np
import pytest
import torch

from kdlab.metrics import ClassificationPanel


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece_reference(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """sum_b |B_b|/n * |acc_b - conf_b| over 15 equal-width bins of the top-1 confidence."""
    p = softmax(logits)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return sum(
        (which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
        for b in range(bins) if (which == b).any()
    )


def random_batch(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    student = rng.normal(0, 2, (n, classes))
    student[np.arange(n), labels] += rng.normal(1.5, 1, n)  # better than chance, not perfect
    teacher = student + rng.normal(0, 1.5, (n, classes))
    return student, teacher, labels


def test_the_panel_matches_float64_references_over_several_batches() -> None:
    student, teacher, labels = random_batch(300, 20, seed=0)
    panel = ClassificationPanel(20)
    for chunk in np.array_split(np.arange(300), 4):  # epoch-level: accumulated over batches
        panel.update(torch.tensor(student[chunk], dtype=torch.float32), torch.tensor(labels[chunk]),
                     torch.tensor(teacher[chunk], dtype=torch.float32))
    values = {name: float(value) for name, value in panel.compute().items()}

    p, q = softmax(teacher), softmax(student)  # p = teacher, q = student
    m = (p + q) / 2
    reference = {
        "acc": (student.argmax(1) == labels).mean(),
        "top5": np.mean([label in np.argsort(-row)[:5] for row, label in zip(student, labels, strict=True)]),
        "ece": ece_reference(student, labels),
        "teacher_acc": (teacher.argmax(1) == labels).mean(),
        "teacher_ece": ece_reference(teacher, labels),
        "agreement": (student.argmax(1) == teacher.argmax(1)).mean(),
        "kl": (p * np.log(p / q)).sum(1).mean(),
        "rkl": (q * np.log(q / p)).sum(1).mean(),
        "js": (0.5 * (p * np.log(p / m)).sum(1) + 0.5 * (q * np.log(q / m)).sum(1)).mean(),
        "tvd": (0.5 * np.abs(p - q).sum(1)).mean(),
    }
    assert set(values) == set(reference)
    for name, expected in reference.items():
        assert values[name] == pytest.approx(expected, abs=1e-5), name
    assert 0 < reference["ece"] and 0 < reference["top5"] - reference["acc"]  # the reference cases are not trivial


def test_without_a_teacher_only_the_model_is_scored_and_reset_starts_over() -> None:
    student, _, labels = random_batch(50, 10, seed=1)
    panel = ClassificationPanel(10)
    panel.update(torch.tensor(student, dtype=torch.float32), torch.tensor(labels))
    assert set(panel.compute()) == {"acc", "top5", "ece"}
    panel.reset()
    perfect = torch.nn.functional.one_hot(torch.tensor(labels), 10).float() * 50
    panel.update(perfect, torch.tensor(labels))
    values = panel.compute()
    assert float(values["acc"]) == 1.0 and float(values["ece"]) == pytest.approx(0.0, abs=1e-6)


def test_top5_only_with_more_than_five_classes() -> None:
    panel = ClassificationPanel(5)
    panel.update(torch.randn(8, 5), torch.randint(0, 5, (8,)), torch.randn(8, 5))
    assert set(panel.compute()) == {"acc", "ece", "teacher_acc", "teacher_ece", "agreement", "kl", "rkl", "js", "tvd"}


def test_identical_teacher_and_student_give_zero_divergences_and_full_agreement() -> None:
    logits = torch.randn(16, 12)
    panel = ClassificationPanel(12)
    panel.update(logits, torch.randint(0, 12, (16,)), logits.clone())
    values = panel.compute()
    assert float(values["agreement"]) == 1.0
    for name in ("kl", "rkl", "js", "tvd"):
        assert float(values[name]) == pytest.approx(0.0, abs=1e-6)


def test_running_means_weight_by_batch_size_per_name_and_start_over_after_pop() -> None:
    from kdlab.metrics.running import RunningMeans

    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0), "reward": 0.5}, 3)
    means.add({"loss": torch.tensor(4.0)}, 1)  # a step without `reward`
    restored = RunningMeans()
    restored.load_state_dict(means.state_dict())
    for running in (means, restored):
        values = running.pop()
        assert float(values["loss"]) == pytest.approx((3 * 1.0 + 4.0) / 4) and values["reward"] == pytest.approx(0.5)
        assert running.pop() == {}
