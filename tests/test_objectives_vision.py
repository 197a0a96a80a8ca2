"""The vision method objectives against float64 references written plainly here, values and
gradients, and the properties their papers state."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdlab.divergences import get
from kdlab.objectives.bdkd import BDKD
from kdlab.objectives.dhkd import DHKD, aligned_loss, binary_kl_norm
from kdlab.objectives.dkd import DKD, decoupled_terms
from kdlab.objectives.nd import ND, class_mean_directions, nd_loss
from kdlab.objectives.nkd import NKD
from kdlab.objectives.progress import Progress
from kdlab.objectives.pskd import PSKD
from kdlab.objectives.sinkd import SinKD
from kdlab.objectives.uskd import USKD

B, C = 6, 7


def random_logits(seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(B, C, generator=g)).requires_grad_()
    teacher = scale * torch.randn(B, C, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    return student, teacher, labels


def as64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().requires_grad_(x.requires_grad)


def softmax64(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ce64(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -torch.log(softmax64(z)[torch.arange(len(labels)), labels]).mean()


def kl64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (torch.log(p) - torch.log(q))).sum(dim=-1)


def assert_matches(loss: torch.Tensor, reference: torch.Tensor, inputs: list[torch.Tensor], refs: list[torch.Tensor]) -> None:
    """Same value, and the same gradient for each (input, float64 twin) pair."""
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(reference, refs)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad.double(), ref, rtol=1e-4, atol=1e-6)


def at_epoch(epoch: int, max_epochs: int = 10) -> Progress:
    return Progress(epoch=epoch, max_epochs=max_epochs)


# --- DKD --------------------------------------------------------------------------------------


def dkd_reference(zs, zt, labels, T, alpha, beta, ce_weight, warm) -> torch.Tensor:
    p, q = softmax64(zt / T), softmax64(zs / T)
    tckd, nckd = [], []
    for i in range(len(labels)):
        y = labels[i]
        bp = torch.stack([p[i, y], 1 - p[i, y]])
        bq = torch.stack([q[i, y], 1 - q[i, y]])
        tckd.append((bp * torch.log(bp / bq)).sum())
        others = [c for c in range(C) if c != y]
        p_hat, q_hat = p[i, others] / (1 - p[i, y]), q[i, others] / (1 - q[i, y])
        nckd.append((p_hat * torch.log(p_hat / q_hat)).sum())
    dkd = T**2 * (alpha * torch.stack(tckd) + beta * torch.stack(nckd)).mean()
    return ce_weight * ce64(zs, labels) + warm * dkd


@pytest.mark.parametrize("epoch", [0, 5, 30])
def test_dkd_matches_reference(epoch: int) -> None:
    zs, zt, labels = random_logits(0)
    objective = DKD(get("fkl"), alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0, warmup_epochs=20)
    loss, logs = objective({"logits": zs, "teacher_logits": zt, "progress": at_epoch(epoch, 40)}, {"label": labels})
    warm = min((epoch + 1) / 20, 1.0)  # epochs counted from 1, as mdistiller does
    zs64 = as64(zs)
    assert_matches(loss, dkd_reference(zs64, zt.double(), labels, 4.0, 1.0, 8.0, 1.0, warm), [zs], [zs64])
    assert set(logs) == {"ce", "tckd", "nckd"}


def test_dkd_decomposes_kl_into_target_and_non_target_parts() -> None:
    """KL(p‖q) = TCKD/T² + (1 - p_y) · NCKD/T², per sample."""
    zs, zt, labels = random_logits(1)
    T = 4.0
    tckd, nckd = decoupled_terms(zs, zt, labels, T, get("fkl"), reduction="none")
    p_y = torch.softmax(zt / T, dim=-1)[torch.arange(B), labels]
    kl = get("fkl")(zs, zt, temperature=T, reduction="none")
    torch.testing.assert_close(kl, tckd / T**2 + (1 - p_y) * nckd / T**2, rtol=1e-5, atol=1e-6)


def test_dkd_is_finite_when_the_target_probability_saturates() -> None:
    """p_y = 1 in float32 (1 - p_y = 0): the log-space split stays finite where log(1 - p_y) would not."""
    zs, zt, labels = random_logits(2)
    zt = zt.clone()
    zt[torch.arange(B), labels] = 500.0
    loss, _ = DKD(get("fkl"), alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0, warmup_epochs=20)({"logits": zs, "teacher_logits": zt, "progress": at_epoch(25, 40)}, {"label": labels})
    (grad,) = torch.autograd.grad(loss, zs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


# --- NKD --------------------------------------------------------------------------------------


def test_nkd_with_unit_gamma_and_temperature_equals_the_brute_force_loop() -> None:
    """docs/methods.md §11.5: NKD(γ=1, λ=1) = mean_i [-p_y log q_y - Σ_{c≠y} p̂_c log q̂_c]."""
    zs, zt, labels = random_logits(3)
    loss, _ = NKD(temperature=1.0, gamma=1.0, ce_weight=0.0)({"logits": zs, "teacher_logits": zt}, {"label": labels})
    zs64, zt64 = as64(zs), zt.double()
    total = 0.0
    for i in range(B):
        p, q = softmax64(zt64[i]), softmax64(zs64[i])
        y = labels[i].item()
        term = -p[y] * torch.log(q[y])
        p_rest, q_rest = 1 - p[y], 1 - q[y]
        for c in range(C):
            if c != y:
                term = term - (p[c] / p_rest) * torch.log(q[c] / q_rest)
        total = total + term
    assert_matches(loss, total / B, [zs], [zs64])


def test_nkd_matches_reference_with_published_cifar_values() -> None:
    zs, zt, labels = random_logits(4)
    lam, gamma = 3.0, 3.5
    loss, _ = NKD(temperature=lam, gamma=gamma, ce_weight=1.0)({"logits": zs, "teacher_logits": zt}, {"label": labels})
    zs64, zt64 = as64(zs), zt.double()
    rows = torch.arange(B)
    target = -(softmax64(zt64)[rows, labels] * torch.log(softmax64(zs64)[rows, labels])).mean()
    keep = torch.ones(B, C, dtype=torch.bool)
    keep[rows, labels] = False
    p_hat = softmax64(zt64[keep].view(B, C - 1) / lam)
    q_hat = softmax64(zs64[keep].view(B, C - 1) / lam)
    non_target = -gamma * lam**2 * (p_hat * torch.log(q_hat)).sum(-1).mean()
    assert_matches(loss, ce64(zs64, labels) + target + non_target, [zs], [zs64])


# --- USKD -------------------------------------------------------------------------------------


def prepared(objective: nn.Module, features: dict, num_classes: int = C) -> nn.Module:
    """Run `prepare` with a stand-in for its `PrepareContext`: what prepare reads, nothing else."""
    stub = SimpleNamespace(model=None, num_classes=num_classes, example_features=lambda model: features)
    objective.prepare(stub)
    return objective


def uskd_reference(z, f_mid, W, b, labels, alpha, beta, mu, log_rank) -> torch.Tensor:
    q = softmax64(z)
    rows = torch.arange(B)
    q_y = q[rows, labels]
    soft = (q_y**2 - (q_y**2).mean() + 1).detach()
    target = -(soft * torch.log(q_y)).mean()
    pooled = f_mid.mean(dim=(2, 3))
    w = pooled @ W.T + b
    smooth = torch.full((B, C), 0.1 / C, dtype=torch.float64)
    smooth[rows, labels] += 0.9
    weak = -mu * (smooth * torch.log(softmax64(w))).sum(-1).mean()
    non_target = 0.0
    for i in range(B):
        y = labels[i].item()
        wp = softmax64(w[i]).detach()
        s = torch.log(q[i]).detach() if log_rank else q[i].detach()
        score = wp / (1 - wp[y] + 1e-6) + s / (1 - s[y] + 1e-6)
        order = sorted(range(C), key=lambda c: -score[c].item())
        zipf = {c: 1.0 / (position + 1) for position, c in enumerate(order)}
        others = [c for c in range(C) if c != y]
        total = sum(zipf[c] for c in others)
        log_rest = torch.log(softmax64(z[i, others]))
        non_target = non_target - sum(zipf[c] / total * log_rest[k] for k, c in enumerate(others))
    return ce64(z, labels) + alpha * target + beta * non_target / B + weak


@pytest.mark.parametrize("log_rank", [True, False])
def test_uskd_matches_reference(log_rank: bool) -> None:
    zs, _, labels = random_logits(5)
    f_mid = torch.randn(B, 4, 3, 3, generator=torch.Generator().manual_seed(6)).requires_grad_()
    objective = prepared(USKD(alpha=0.1, beta=0.1, mu=0.1, stage=0, rank_uses_log_probs=log_rank, ce_weight=1.0), {"stages": [f_mid]})
    assert objective.weak_head.in_features == 4 and objective.weak_head.out_features == C
    loss, _ = objective({"logits": zs, "features": {"stages": [f_mid]}}, {"label": labels})
    zs64, f64 = as64(zs), as64(f_mid)
    W, b = objective.weak_head.weight.detach().double(), objective.weak_head.bias.detach().double()
    reference = uskd_reference(zs64, f64, W, b, labels, 0.1, 0.1, 0.1, log_rank)
    assert_matches(loss, reference, [zs, f_mid], [zs64, f64])


def test_uskd_rejects_a_stage_the_model_does_not_have() -> None:
    with pytest.raises(ValueError, match="stage=3 does not exist: the model has 2 stages"):
        prepared(USKD(alpha=0.1, beta=0.1, mu=0.1, stage=3, rank_uses_log_probs=True, ce_weight=1.0), {"stages": [torch.zeros(2, 4, 2, 2)] * 2})


# --- PS-KD ------------------------------------------------------------------------------------


def test_pskd_targets_are_one_hot_in_the_first_epoch_then_mix_in_past_predictions() -> None:
    E, N = 10, 20
    objective = PSKD(alpha_T=0.8)
    objective.prepare(SimpleNamespace(num_classes=C, train_loader=lambda: SimpleNamespace(dataset=range(N))))
    assert objective.predictions.shape == (N, C)
    assert objective.alpha(at_epoch(0, E)) == pytest.approx(0.08)
    assert objective.alpha(at_epoch(E - 1, E)) == pytest.approx(0.8)

    zs, _, labels = random_logits(7)
    index = torch.tensor([3, 0, 19, 7, 8, 11])
    one_hot = torch.nn.functional.one_hot(labels, C).float()
    torch.testing.assert_close(objective.targets(labels, index, objective.alpha(at_epoch(0, E))), one_hot)

    loss, _ = objective({"logits": zs, "progress": at_epoch(0, E)}, {"label": labels, "index": index})
    assert loss.item() == pytest.approx(ce64(zs.double(), labels).item(), rel=1e-5)  # epoch 0: plain CE

    # Epoch 1: the targets mix in what was recorded for these samples in epoch 0.
    past = torch.softmax(zs.detach(), dim=-1)
    alpha = objective.alpha(at_epoch(1, E))
    zs2 = torch.randn(B, C).requires_grad_()
    loss, _ = objective({"logits": zs2, "progress": at_epoch(1, E)}, {"label": labels, "index": index})
    zs64 = as64(zs2)
    soft = (1 - alpha) * one_hot.double() + alpha * past.double()
    assert_matches(loss, -(soft * torch.log(softmax64(zs64))).sum(-1).mean(), [zs2], [zs64])


def _record_on_two_processes(rank: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    objective = PSKD(alpha_T=0.8)
    objective.register_buffer("predictions", torch.zeros(8, 3))
    objective.register_buffer("recorded", torch.zeros(8, dtype=torch.bool))
    index = torch.tensor([0, 1]) + 2 * rank  # rank 0 trains samples 0, 1; rank 1 samples 2, 3
    objective.record(index, torch.full((2, 3), float(rank + 1)))
    torch.save({"predictions": objective.predictions, "recorded": objective.recorded}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_pskd_predictions_are_shared_across_processes(tmp_path) -> None:
    """With DDP each process trains on its shard; every process must hold every sample's prediction."""
    torch.multiprocessing.spawn(_record_on_two_processes, args=(str(tmp_path / "init"), str(tmp_path / "r")), nprocs=2)
    expected = torch.zeros(8, 3)
    expected[0:2], expected[2:4] = 1.0, 2.0
    for rank in (0, 1):
        state = torch.load(tmp_path / f"r.{rank}")
        torch.testing.assert_close(state["predictions"], expected)
        assert state["recorded"].tolist() == [True] * 4 + [False] * 4


def test_pskd_schedule_needs_an_epoch_budget() -> None:
    with pytest.raises(ValueError, match="finite trainer.max_epochs"):
        PSKD(alpha_T=0.8).alpha(Progress(epoch=0, max_epochs=-1))


# --- SinKD ------------------------------------------------------------------------------------


def sinkd_code_sinkhorn(zs, zt, tau=2.0, eps=0.1, n_iters=20) -> torch.Tensor:
    """2018cx/SinKD's loss.py steps 1-5 (without the scale): unit row/column sums, mass B."""
    q, p = softmax64(zs / tau), softmax64(zt / tau)
    cost = (q[:, None, :] - p[None, :, :]).abs().sum(-1)
    plan = torch.exp(-cost / eps)
    for _ in range(n_iters):
        plan = plan / plan.sum(dim=1, keepdim=True)
        plan = plan / plan.sum(dim=0, keepdim=True)
    return (plan * cost).sum()


def test_sinkd_code_faithful_matches_the_released_loss() -> None:
    zs, zt, labels = random_logits(8, scale=1.0)
    objective = SinKD(get("fkl"), mode="code_faithful", alpha=0.9, temperature=2.0, sinkhorn_weight=0.8, scale=1e-3, tau=2.0, epsilon=0.1, n_iters=20, cost="l1", detach_plan=False)
    loss, logs = objective({"logits": zs, "teacher_logits": zt}, {"label": labels})
    zs64, zt64 = as64(zs), zt.double()
    kd = kl64(softmax64(zt64 / 2), softmax64(zs64 / 2)).mean()  # no T² in the code
    reference = 0.1 * ce64(zs64, labels) + 0.9 * kd + 0.8 * 1e-3 * sinkd_code_sinkhorn(zs64, zt64)
    assert_matches(loss, reference, [zs], [zs64])
    assert logs["sinkhorn"] > 0


def test_sinkd_paper_clean_is_the_code_value_over_batch_size() -> None:
    zs, zt, labels = random_logits(9, scale=1.0)
    outputs, batch = {"logits": zs, "teacher_logits": zt}, {"label": labels}
    settings = dict(alpha=0.9, temperature=2.0, sinkhorn_weight=0.8, scale=1e-3, tau=2.0, epsilon=0.1, n_iters=20, cost="l1", detach_plan=False)
    _, code = SinKD(get("fkl"), mode="code_faithful", **settings)(outputs, batch)
    _, clean = SinKD(get("fkl"), mode="paper_clean", **settings)(outputs, batch)
    assert clean["sinkhorn"].item() == pytest.approx(code["sinkhorn"].item() / B, rel=1e-4)
    assert clean["kd"].item() == pytest.approx(2.0**2 * code["kd"].item(), rel=1e-6)


# --- BD-KD ------------------------------------------------------------------------------------


def entropy64(z: torch.Tensor) -> torch.Tensor:
    p = softmax64(z)
    return -(p * torch.log(p)).sum(-1)


@pytest.mark.parametrize("weighting", ["hard_switch", "sigmoid"])
def test_bdkd_matches_reference_and_each_network_gets_only_its_own_gradient(weighting: str) -> None:
    zs, zt, labels = random_logits(10)
    zt.requires_grad_()
    T, lam_s, lam_t, k = 3.0, 0.7, 0.4, 2.0
    objective = BDKD(temperature=T, student_kd_weight=lam_s, teacher_kd_weight=lam_t, weighting=weighting, sharpness=k)
    loss, logs = objective({"logits": zs, "teacher_logits": zt}, {"label": labels})

    zs64, zt64 = as64(zs), as64(zt)
    gap = (entropy64(zs64 / T) - entropy64(zt64 / T)).detach()
    w_r = (gap > 0).double() if weighting == "hard_switch" else torch.sigmoid(k * gap)
    assert 0 < w_r.mean() < 1, "the test should exercise both directions"
    qs, qt = softmax64(zs64 / T), softmax64(zt64 / T)
    student_loss = ce64(zs64, labels) + lam_s * T**2 * ((1 - w_r) * kl64(qt.detach(), qs) + w_r * kl64(qs, qt.detach())).mean()
    teacher_loss = ce64(zt64, labels) + lam_t * T**2 * kl64(qt, qs.detach()).mean()
    assert logs["reverse_kl_share"].item() == pytest.approx(w_r.mean().item())
    # d(loss)/d(z_s) is the student loss's alone, d(loss)/d(z_t) the teacher loss's alone.
    assert loss.item() == pytest.approx((student_loss + teacher_loss).item(), rel=1e-5)
    g_s, g_t = torch.autograd.grad(loss, [zs, zt])
    torch.testing.assert_close(g_s.double(), torch.autograd.grad(student_loss, zs64)[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_t.double(), torch.autograd.grad(teacher_loss, zt64)[0], rtol=1e-4, atol=1e-6)


def test_bdkd_hard_switch_weights_follow_the_entropy_gap() -> None:
    from kdlab.objectives.bdkd import reverse_kl_weights

    gap = torch.tensor([-1.0, -1e-3, 0.0, 2e-3, 4.0])
    torch.testing.assert_close(reverse_kl_weights(gap, "hard_switch", 1.0), torch.tensor([0.0, 0, 0, 1, 1]))
    torch.testing.assert_close(reverse_kl_weights(gap, "sigmoid", 2.0), torch.sigmoid(2 * gap))
    with pytest.raises(ValueError, match="weighting must be one of"):
        BDKD(temperature=4.0, student_kd_weight=1.0, teacher_kd_weight=1.0, weighting="entropy", sharpness=1.0)


# --- DHKD -------------------------------------------------------------------------------------


def test_binary_kl_norm_is_a_log_cosh_logit_matching_loss() -> None:
    """docs/methods.md §11.6: BinaryKL-Norm = (T²/B) Σ log cosh((z_s - z_t)/(2T)) for |d| < 18."""
    zs, zt, _ = random_logits(11, scale=4.0)
    T = 2.0
    zs64 = as64(zs)
    reference = T**2 * torch.log(torch.cosh((zs64 - zt.double()) / (2 * T))).sum() / B
    assert_matches(binary_kl_norm(zs, zt, T), reference, [zs], [zs64])
    # The official clamped form agrees while |d| is moderate ...
    assert binary_kl_norm(zs, zt, T, replicate_clamp=True).item() == pytest.approx(reference.item(), rel=1e-4)


def test_binary_kl_norm_is_stable_where_the_clamped_form_stops_learning() -> None:
    zs = torch.tensor([[200.0, -200.0]], requires_grad=True)
    zt = torch.zeros(1, 2)
    value = binary_kl_norm(zs, zt, 2.0)
    (grad,) = torch.autograd.grad(value, zs)
    assert value.item() == pytest.approx(4 * 2 * (50 - math.log(2)), rel=1e-6)  # log cosh x = |x| - log 2 for large x
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0]]))  # T² · tanh(d/2) / (2T) → T/2
    (clamped,) = torch.autograd.grad(binary_kl_norm(zs, zt, 2.0, replicate_clamp=True), zs)
    assert (clamped == 0).all()


def test_dhkd_trains_the_auxiliary_head_on_the_teacher_and_the_model_head_on_labels() -> None:
    zs, zt, labels = random_logits(12)
    h = torch.randn(B, 5, generator=torch.Generator().manual_seed(13)).requires_grad_()
    objective = prepared(DHKD(temperature=2.0, gamma=1.0, alpha=0.5, aux_head="linear", grad_align=False, replicate_clamp=False),
                         {"penultimate": h})
    loss, _ = objective({"logits": zs, "teacher_logits": zt, "features": {"penultimate": h}}, {"label": labels})
    zs64, h64 = as64(zs), as64(h)
    aux = h64 @ objective.aux_head.weight.detach().double().T + objective.aux_head.bias.detach().double()
    reference = ce64(zs64, labels) + 0.5 * 4.0 * torch.log(torch.cosh((aux - zt.double()) / 4.0)).sum() / B
    assert_matches(loss, reference, [zs, h], [zs64, h64])


def test_gradient_alignment_projects_the_kd_gradient_off_a_conflicting_ce_gradient() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    ce_direction, kd_direction = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    loss = aligned_loss((ce_direction * w).sum(), (kd_direction * w).sum(), [w])
    assert loss.item() == pytest.approx((ce_direction @ w + kd_direction @ w).item())
    (grad,) = torch.autograd.grad(loss, w)
    # g_kd · g_ce = -1 < 0: g_kd ← g_kd - (-1/1) g_ce = [0, 1]; the update uses g_ce + g_kd.
    torch.testing.assert_close(grad, torch.tensor([1.0, 1.0]))
    # No conflict: the plain sum.
    (grad,) = torch.autograd.grad(aligned_loss((ce_direction * w).sum(), (torch.tensor([1.0, 1.0]) * w).sum(), [w]), w)
    torch.testing.assert_close(grad, torch.tensor([2.0, 1.0]))


# --- ND ---------------------------------------------------------------------------------------


def test_nd_loss_matches_the_per_sample_loop_of_the_code() -> None:
    g = torch.Generator().manual_seed(14)
    hs = torch.randn(B, 5, generator=g).requires_grad_()
    ht, centers = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    directions = centers / centers.norm(dim=-1, keepdim=True)
    hs64 = as64(hs)
    reference = sum(
        1 - torch.dot(hs64[i], directions[i].double()) / torch.maximum(hs64[i].norm(), ht[i].double().norm()) for i in range(B)
    ) / B
    assert_matches(nd_loss(hs, ht, directions), reference, [hs], [hs64])


class FeatureNet(nn.Module):
    """Penultimate features = the inputs themselves: class means are then known exactly."""

    def forward(self, x, return_features=False):
        return (x, {"penultimate": x, "stages": []}) if return_features else x


def test_nd_class_directions_are_the_normalised_class_means() -> None:
    inputs = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loader = [{"input": inputs[:2], "label": labels[:2]}, {"input": inputs[2:], "label": labels[2:]}]
    directions = class_mean_directions(FeatureNet(), loader, 2, torch.device("cpu"))
    torch.testing.assert_close(directions, torch.tensor([[1.0, 0.0], [0.5, 1.5]]) / torch.tensor([[1.0], [math.sqrt(2.5)]]))
    with pytest.raises(ValueError, match=r"none for classes \[2\]"):
        class_mean_directions(FeatureNet(), loader, 3, torch.device("cpu"))


def test_nd_total_loss_combines_ce_warmed_kd_and_nd() -> None:
    zs, zt, labels = random_logits(15)
    objective = ND(get("fkl"), temperature=4.0, ce_weight=1.0, kd_weight=3.5, nd_weight=2.0, kd_warmup_epochs=20)
    objective.projector = nn.Identity()
    objective.directions = torch.nn.functional.normalize(torch.randn(C, 5), dim=-1)
    hs, ht = torch.randn(B, 5).requires_grad_(), torch.randn(B, 5)
    outputs = {"logits": zs, "teacher_logits": zt, "progress": at_epoch(5, 40),
               "features": {"penultimate": hs}, "teacher_features": {"penultimate": ht}}
    loss, _ = objective(outputs, {"label": labels})
    zs64, hs64 = as64(zs), as64(hs)
    kd = 16 * kl64(softmax64(zt.double() / 4), softmax64(zs64 / 4)).mean()
    reference = ce64(zs64, labels) + (5 / 20) * 3.5 * kd + 2.0 * nd_loss(hs64, ht.double(), objective.directions[labels].double())
    assert_matches(loss, reference, [zs, hs], [zs64, hs64])
