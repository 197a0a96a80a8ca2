"""DDK: the factor-smooth update of the domain mixture against a plain reference, the domain-weighted
sampler, the loss of the preset against a float64 reference, and the oracle mixture end to end."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_configs import compose_train
from test_oracle import ORACLE, TEACHER

from kdlab.data.domains import DomainMixture, DomainWeightedSampler
from kdlab.errors import ConfigError
from kdlab.modules.domain_reweighting import FIGURE, HISTORY_FILE, DomainReweighting, ddk_update
from kdlab.run import build_objective, run


def reference_update(weights, student, teacher, smoothing, discrepancy, carry):
    """r'_i = η ψ_i / Σ_j ψ_j + (1 − η)/N, ψ_i = (r_i if carry else 1) · exp(e_i), e = ℓ_S/ℓ_T or ℓ_S − ℓ_T; plain floats."""
    evidence = [s / t if discrepancy == "ratio" else s - t for s, t in zip(student, teacher)]
    psi = [(w if carry else 1.0) * math.exp(e) for w, e in zip(weights, evidence)]
    return [smoothing * p / sum(psi) + (1 - smoothing) / len(weights) for p in psi]


@pytest.mark.parametrize("discrepancy", ["ratio", "difference"])
@pytest.mark.parametrize("carry", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.5, 1.0])
def test_update_matches_the_reference_and_sums_to_one(discrepancy: str, carry: bool, smoothing: float) -> None:
    weights, student, teacher = [0.5, 0.3, 0.2], [3.1, 2.2, 4.0], [2.0, 2.1, 2.5]
    new = ddk_update(torch.tensor(weights, dtype=torch.float64), torch.tensor(student, dtype=torch.float64),
                     torch.tensor(teacher, dtype=torch.float64), smoothing=smoothing, discrepancy=discrepancy, carry=carry)
    torch.testing.assert_close(new, torch.tensor(reference_update(weights, student, teacher, smoothing, discrepancy, carry), dtype=torch.float64))
    assert float(new.sum()) == pytest.approx(1.0) and (new >= (1 - smoothing) / 3 - 1e-12).all()


def test_weights_move_toward_the_domain_with_the_largest_gap() -> None:
    """Domain 2's student is twice as far from the teacher as the others: its weight grows at every
    update (carried factor) to a fixed point below η + (1 − η)/N, the others shrink but stay above
    (1 − η)/N; η = 0 stays uniform."""
    student, teacher = torch.tensor([2.0, 2.2, 4.0], dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    for _ in range(12):
        new = ddk_update(weights, student, teacher, smoothing=0.5, discrepancy="ratio", carry=True)
        assert new[2] > weights[2] and new[0] < weights[0] and float(new.sum()) == pytest.approx(1.0)
        step, weights = float(new[2] - weights[2]), new
    assert 0.5 < float(weights[2]) < 0.5 + 0.5 / 3 and float(weights[0]) > 0.5 / 3 and step < 1e-3
    one_step = ddk_update(torch.full((3,), 1 / 3, dtype=torch.float64), student, teacher, smoothing=1.0, discrepancy="ratio", carry=False)
    torch.testing.assert_close(one_step, torch.softmax(student / teacher, 0))  # the paper's factor exp(ℓ_S/ℓ_T) / Σ exp(ℓ_S/ℓ_T)
    uniform = ddk_update(weights, student, teacher, smoothing=0.0, discrepancy="ratio", carry=True)
    torch.testing.assert_close(uniform, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_sampler_follows_the_current_weights() -> None:
    domain_of = torch.tensor([0] * 10 + [1] * 30 + [2] * 5)
    mixture = DomainMixture()
    mixture.init_weights(["a", "b", "c"])
    sampler = DomainWeightedSampler(domain_of, lambda: mixture.domain_weights)
    torch.manual_seed(0)
    counts = torch.bincount(domain_of[list(sampler)], minlength=3).float()
    assert len(sampler) == 45 and (counts - 15).abs().max() <= 9  # uniform over domains, not over rows (30 of b)
    mixture.set_domain_weights(torch.tensor([0.0, 0.0, 1.0]))
    drawn = [int(i) for i in sampler][:15]
    assert all(domain_of[i] == 2 for i in drawn) and sorted(drawn[:5]) == [40, 41, 42, 43, 44]  # c cycled without replacement
    iterator = iter(sampler)
    next(iterator)
    mixture.set_domain_weights(torch.tensor([1.0, 0.0, 0.0]))  # a change applies from the next draw
    assert all(domain_of[next(iterator)] == 0 for _ in range(10))
    with pytest.raises(ConfigError, match="summing to one"):
        mixture.set_domain_weights(torch.tensor([0.5, 0.2, 0.2]))


def test_ddk_loss_is_ce_plus_gamma_kl_over_one_plus_gamma(tmp_path: Path) -> None:
    objective, record = build_objective(compose_train(["+method=ddk"], tmp_path), "ddk")
    assert record["divergence"] == "fkl"
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(6, (2, 5), generator=generator)
    labels[:, :2] = -100

    def reference(student):  # (CE + γ T² KL(p_T ‖ q)) / (1 + γ), γ = 1, T = 1, token means over positions predicting labels[t+1]
        ce, kl, n = 0.0, 0.0, 0
        for b in range(2):
            for t in range(4):
                if labels[b, t + 1] == -100:
                    continue
                p, log_q = torch.softmax(teacher[b, t], -1), torch.log_softmax(student[b, t], -1)
                ce, kl, n = ce - log_q[labels[b, t + 1]], kl + (p * (p.log() - log_q)).sum(), n + 1
        return (ce / n + kl / n) / 2

    loss, _ = objective({"logits": student, "teacher_logits": teacher}, {"labels": labels})
    torch.testing.assert_close(loss, reference(student))
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], torch.autograd.grad(reference(student), student)[0])


def test_ddk_refuses_data_without_domains() -> None:
    callback = DomainReweighting(interval=1, smoothing=0.5, discrepancy="ratio", carry=True)
    with pytest.raises(ConfigError, match="dataset=oracle_domains"):
        callback.setup(SimpleNamespace(datamodule=object()), None, "fit")
    with pytest.raises(ConfigError, match="discrepancy"):
        DomainReweighting(interval=1, smoothing=0.5, discrepancy="kl", carry=True)


def test_ddk_on_an_oracle_mixture_logs_gaps_and_weights(tmp_path: Path) -> None:
    def spec(**changes) -> str:
        return "{" + ",".join(f"{key}:{value}" for key, value in (ORACLE | changes).items()) + "}"

    teacher = ",".join(f"{key}:{value}" for key, value in TEACHER.items())
    overrides = [
        "experiment=ddk_oracle", f"dataset.datamodule.domains.sharp={spec()}", f"dataset.datamodule.domains.mixed={spec(seed=1, init_std=0.2)}",
        f"dataset.datamodule.domains.flat={spec(seed=2, temperature=1.0)}", f"dataset.datamodule.teacher={{{teacher}}}",
        "dataset.datamodule.prompts={train:8,val:4,test:4}", "dataset.batch_size=4", "callbacks.domain_reweighting.interval=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "logger=csv", "~callbacks.progress_bar", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
    ]
    metrics = run(compose_train(overrides, tmp_path))
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert history["domains"] == ["sharp", "mixed", "flat"] and [entry["step"] for entry in history["history"]] == [0, 1, 2]
    for before, after in zip(history["history"], history["history"][1:]):  # each update is the formula on the measured CEs
        expected = reference_update(before["weights"], after["student_nll"], after["teacher_nll"], 0.5, "ratio", True)
        assert after["weights"] == pytest.approx(expected) and sum(after["weights"]) == pytest.approx(1.0)
    assert (tmp_path / FIGURE).is_file()
    for name in ("ddk/weight/sharp", "ddk/discrepancy/flat", "ddk/golden_gap/sharp", "test/ddk_golden_gap/flat", "test/ddk_teacher_nll/sharp"):
        assert name in metrics, name
    assert sum(metrics[f"ddk/weight/{d}"] for d in history["domains"]) == pytest.approx(1.0)
