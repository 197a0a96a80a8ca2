"""OFA-KD, PLD, TGeo-KD, ABKD and MCMI against float64 references written plainly here (values and
gradients), the identities their papers state, and the official formulas (OFAKD `ofa_loss`, ABKD
`ABKL`, ICLRMCMI `CE_KL_loss`) re-written on fixed inputs."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_objectives_vision import B, C, as64, assert_matches, ce64, kl64, random_logits, softmax64
from torch import nn

from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.models.ofa_projectors import SepConv, TokenProjector, cnn_projector, stage_projector
from kdlab.objectives.abkd import ABKD
from kdlab.objectives.base import PrepareContext
from kdlab.objectives.mcmi import MCMI, centroid_statistics
from kdlab.objectives.ofa import OFA, ofa_loss
from kdlab.objectives.pld import PLD, plackett_luce, pld_loss, teacher_permutation
from kdlab.objectives.progress import Progress
from kdlab.objectives.tgeo import PER_SAMPLE, TGeoKD, geometry_features, lookahead_outer_loss

# --- PLD --------------------------------------------------------------------------------------


def pld_reference(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, tau: float, top_k: int | None = None) -> torch.Tensor:
    """The paper's weighted Plackett–Luce loss by explicit loops, in float64."""
    total = 0.0
    for i in range(len(labels)):
        y = int(labels[i])
        others = sorted((c for c in range(zt.shape[1]) if c != y), key=lambda c: -float(zt[i, c]))
        order = [y, *others]
        alpha = softmax64(zt[i].double() / tau)
        for k in range(top_k or len(order)):
            rest = torch.stack([zs[i, order[j]] for j in range(k, len(order))])
            total = total + alpha[order[k]] * (torch.log(torch.exp(rest).sum()) - zs[i, order[k]])
    return total / len(labels)


@pytest.mark.parametrize(("tau", "top_k"), [(1.0, None), (2.0, None), (1.0, 3)])
def test_pld_matches_the_weighted_plackett_luce_loop(tau: float, top_k: int | None) -> None:
    zs, zt, labels = random_logits(20)
    loss, logs = PLD(teacher_temperature=tau, top_k=top_k)({"logits": zs, "teacher_logits": zt}, {"label": labels})
    zs64 = as64(zs)
    assert_matches(loss, pld_reference(zs64, zt.double(), labels, tau, top_k), [zs], [zs64])
    assert set(logs) == {"pld", "ce"}


def test_pld_ranks_the_label_first_then_the_teacher_order() -> None:
    zt = torch.tensor([[0.5, 3.0, -1.0, 2.0], [4.0, 1.0, 1.0, 0.0]])
    order = teacher_permutation(zt, torch.tensor([2, 3]))
    assert order.tolist() == [[2, 1, 3, 0], [3, 0, 1, 2]]  # ties keep the class order


def test_pld_first_term_is_the_teacher_weighted_cross_entropy() -> None:
    """The k = 1 term of L_PLD is p_y · CE(y, q): with the list cut after one place that is all that remains."""
    zs, zt, labels = random_logits(21)
    loss = pld_loss(zs, zt, labels, teacher_temperature=1.0, top_k=1)
    zs64 = as64(zs)
    p_y = softmax64(zt.double())[torch.arange(B), labels]
    ce = -torch.log(softmax64(zs64)[torch.arange(B), labels])
    assert_matches(loss, (p_y * ce).mean(), [zs], [zs64])


def test_pld_with_unit_weights_is_listmle() -> None:
    """α ≡ 1: the negative log Plackett–Luce probability of the order, a distribution over permutations."""
    g = torch.Generator().manual_seed(22)
    scores = torch.randn(3, 4, generator=g, dtype=torch.float64)
    probabilities = []
    for permutation in itertools.permutations(range(4)):
        ranked = scores[:, list(permutation)]
        nll = plackett_luce(ranked, torch.ones_like(ranked))
        product = torch.ones(3, dtype=torch.float64)
        for k in range(4):
            product = product * torch.exp(ranked[:, k]) / torch.exp(ranked[:, k:]).sum(dim=-1)
        torch.testing.assert_close(nll, -torch.log(product))
        probabilities.append(product)
    torch.testing.assert_close(torch.stack(probabilities).sum(dim=0), torch.ones(3, dtype=torch.float64))


def test_pld_is_invariant_to_a_constant_added_to_the_student_logits() -> None:
    zs, zt, labels = random_logits(23)
    shifted = zs.detach() + torch.linspace(-5, 5, B)[:, None]
    torch.testing.assert_close(pld_loss(zs.detach(), zt, labels, 1.0, None), pld_loss(shifted, zt, labels, 1.0, None))


def test_pld_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="objective.top_k"):
        PLD(teacher_temperature=1.0, top_k=0)
    with pytest.raises(ConfigError, match="objective.teacher_temperature"):
        PLD(teacher_temperature=0.0, top_k=None)


# --- OFA --------------------------------------------------------------------------------------


def official_ofa_loss64(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, eps: float, temperature: float) -> torch.Tensor:
    """Hao840/OFAKD `distillers/ofa.py` `ofa_loss`, re-written in float64 on the same inputs."""
    pred_student = softmax64(zs / temperature)
    pred_teacher = softmax64(zt / temperature)
    target_mask = F.one_hot(labels, zs.shape[-1]).double()
    prod = (pred_teacher + target_mask) ** eps
    return torch.sum(-(prod - target_mask) * torch.log(pred_student), dim=-1).mean()


@pytest.mark.parametrize(("eps", "temperature"), [(1.0, 1.0), (1.5, 1.0), (1.5, 2.0), (0.7, 4.0)])
def test_ofa_loss_reproduces_the_official_formula(eps: float, temperature: float) -> None:
    zs, zt, labels = random_logits(30)
    zs64 = as64(zs)
    assert_matches(ofa_loss(zs, zt, labels, eps, temperature), official_ofa_loss64(zs64, zt.double(), labels, eps, temperature), [zs], [zs64])


def test_ofa_with_unit_eps_is_the_kd_cross_entropy() -> None:
    """ε = 1: −Σ_c p_c log q_c = KL(p‖q) + H(p), with or without the exponent on the non-target weights."""
    zs, zt, labels = random_logits(31)
    p = softmax64(zt.double())
    for on_nontarget in (True, False):
        zs64 = as64(zs)
        reference = (kl64(p, softmax64(zs64)) - (p * torch.log(p)).sum(dim=-1)).mean()
        assert_matches(ofa_loss(zs, zt, labels, 1.0, 1.0, on_nontarget), reference, [zs], [zs64])


def test_ofa_eps_enhances_the_target_weight() -> None:
    """ε > 1: target weight (1 + p_y)^ε − 1 > p_y; non-target weights p_c^ε (code) or p_c (flag off)."""
    zs, zt, labels = random_logits(32)
    eps = 1.5
    p = softmax64(zt.double())
    p_y = p[torch.arange(B), labels]
    assert ((1 + p_y) ** eps - 1 > p_y).all()
    log_q = torch.log(softmax64(zs.detach().double()))
    target = -(((1 + p_y) ** eps - 1) * log_q[torch.arange(B), labels])
    mask = F.one_hot(labels, C).bool()
    for on_nontarget, weights in ((True, p**eps), (False, p)):
        reference = (target - (weights * log_q).masked_fill(mask, 0).sum(dim=-1)).mean()
        assert ofa_loss(zs.detach(), zt, labels, eps, 1.0, on_nontarget).item() == pytest.approx(reference.item(), rel=1e-5)


def test_cnn_projectors_downsample_to_the_last_stage() -> None:
    """Stage k of S: S − k separable blocks doubling the channels (the last to max(d_s, d_t)); the last stage a 1x1 conv."""
    first = cnn_projector(8, stage=1, stages=3, width=64, num_classes=10)
    assert [type(m) for m in first[:2]] == [SepConv, SepConv]
    assert (first[0][0].in_channels, first[0][-3].out_channels, first[1][-3].out_channels) == (8, 16, 64)
    assert isinstance(cnn_projector(32, stage=3, stages=3, width=64, num_classes=10)[0], nn.Conv2d)
    logits = first(torch.randn(2, 8, 16, 16))
    assert logits.shape == (2, 10)


def test_token_projector_keeps_the_class_token_and_merges_large_grids() -> None:
    projector = TokenProjector(tokens=1 + 28 * 28, dim=16, prefix_tokens=1, width=16, blocks=2, num_classes=5)
    assert len(projector.merge) == 2 and len(projector.blocks) == 2  # 28 -> 14 -> 7
    assert projector(torch.randn(2, 1 + 28 * 28, 16)).shape == (2, 5)
    assert len(TokenProjector(tokens=17, dim=32, prefix_tokens=1, width=32, blocks=1, num_classes=5).merge) == 0
    with pytest.raises(ValueError, match="square patch grid"):
        TokenProjector(tokens=18, dim=32, prefix_tokens=1, width=32, blocks=1, num_classes=5)


def test_projector_starts_from_the_code_initialisation() -> None:
    projector = stage_projector(torch.randn(2, 8, 8, 8), 1, 2, student_dim=16, teacher_dim=64, prefix_tokens=0, num_classes=10)
    head = projector[-1]
    assert head.in_features == 64 and torch.equal(head.bias, torch.zeros(10)) and head.weight.std().item() < 0.03


class TwoStageNet(nn.Module):
    """A tiny CNN with two stages and a feature dict like kdlab's vision models."""

    def __init__(self, width: int, num_classes: int = C) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(1, width, 3, padding=1), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)])
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x, return_features=False):
        stages = []
        for stage in self.stages:
            x = torch.relu(stage(x))
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        logits = self.head(pooled)
        return (logits, {"penultimate": pooled, "stages": stages}) if return_features else logits


def context_for(model: nn.Module, teacher: nn.Module | None, batches: list[dict[str, torch.Tensor]], num_classes: int = C) -> PrepareContext:
    return PrepareContext(model=model, teacher=teacher, num_classes=num_classes, device=torch.device("cpu"),
                          train_loader=lambda: batches, trainable_parameters=lambda: list(model.parameters()))


def image_batches(seed: int, count: int = 2, size: int = B) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input": torch.randn(size, 1, 8, 8, generator=g), "label": torch.arange(size) % C, "index": torch.arange(size) + i * size}
            for i in range(count)]


def test_ofa_total_loss_sums_ce_the_logit_term_and_each_stage_branch() -> None:
    student, teacher = TwoStageNet(4), TwoStageNet(8)
    batch = image_batches(33, count=1)[0]
    objective = OFA(eps=[1.2, 1.4, 1.6], stages=None, temperature=1.0, gt_weight=1.0, kd_weight=0.5, ofa_weight=2.0, exponent_on_nontarget=True)
    objective.prepare(context_for(student, teacher, [batch]))
    assert list(objective.projectors) == ["1", "2"] and objective.stage_eps == [1.2, 1.4, 1.6]
    logits, features = student(batch["input"], return_features=True)
    teacher_logits = teacher(batch["input"]).detach()
    loss, logs = objective({"logits": logits, "teacher_logits": teacher_logits, "features": features}, batch)
    branches = [official_ofa_loss64(objective.projectors[str(k)](features["stages"][k - 1]).double(), teacher_logits.double(), batch["label"], eps, 1.0)
                for k, eps in ((1, 1.2), (2, 1.4))]
    reference = ce64(logits.double(), batch["label"]) + 0.5 * official_ofa_loss64(logits.double(), teacher_logits.double(), batch["label"], 1.6, 1.0) + 2.0 * sum(branches)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert set(logs) == {"ce", "kd", "ofa"}


def test_ofa_checks_its_stages_and_eps_against_the_student() -> None:
    student, teacher = TwoStageNet(4), TwoStageNet(8)
    batches = image_batches(34, count=1)
    with pytest.raises(ConfigError, match=r"objective.stages=\[3\]: the student has stages 1..2"):
        OFA(eps=[1.0], stages=[3], temperature=1.0, gt_weight=1, kd_weight=1, ofa_weight=1, exponent_on_nontarget=True).prepare(context_for(student, teacher, batches))
    with pytest.raises(ConfigError, match="objective.eps needs 1 or 3 values"):
        OFA(eps=[1.0, 1.0], stages=None, temperature=1.0, gt_weight=1, kd_weight=1, ofa_weight=1, exponent_on_nontarget=True).prepare(context_for(student, teacher, batches))
    with pytest.raises(ConfigError, match="objective.eps"):
        OFA(eps=0.0, stages=None, temperature=1.0, gt_weight=1, kd_weight=1, ofa_weight=1, exponent_on_nontarget=True)


# --- ABKD -------------------------------------------------------------------------------------


def official_abkl64(zs: torch.Tensor, zt: torch.Tensor, T: float, alpha: float, beta: float) -> torch.Tensor:
    """ghwang-s/abkd `standard_classification/distiller_zoo/abkl.py`, general case, re-written in float64."""
    teacher_probs, student_probs = softmax64(zt / T), softmax64(zs / T)
    first = teacher_probs**alpha * student_probs**beta
    second = alpha / (alpha + beta) * teacher_probs ** (alpha + beta)
    third = beta / (alpha + beta) * student_probs ** (alpha + beta)
    return (-torch.sum(first - second - third, dim=1) / (alpha * beta)).mean()


def test_abkd_is_the_code_loss_ce_plus_b_times_the_ab_divergence() -> None:
    """kd_weight = b / T²: the preset's 2.0 at T = 4 is the code's b = 32 (`-r 1 -b 32 -a 0`)."""
    zs, zt, labels = random_logits(40)
    objective = ABKD(get("ab", alpha=0.8, beta=0.3), temperature=4.0, ce_weight=1.0, kd_weight=2.0)
    loss, _ = objective({"logits": zs, "teacher_logits": zt}, {"label": labels})
    zs64 = as64(zs)
    reference = ce64(zs64, labels) + 32 * official_abkl64(zs64, zt.double(), 4.0, 0.8, 0.3)
    assert_matches(loss, reference, [zs], [zs64])


def test_abkd_takes_the_ab_divergence_only() -> None:
    assert ABKD.divergence_slot.accepts("ab", {"alpha": 0.8, "beta": 0.3})
    assert not ABKD.divergence_slot.accepts("fkl", {"drop_teacher_entropy": False})
    with pytest.raises(ConfigError, match="takes the divergences ab"):
        ABKD(get("fkl"), temperature=4.0, ce_weight=1.0, kd_weight=2.0)


# --- TGeo-KD ----------------------------------------------------------------------------------


def test_geometry_features_are_the_triangle_and_class_mean_edges() -> None:
    q = torch.tensor([[0.6, 0.3, 0.1]])
    p = torch.tensor([[0.2, 0.7, 0.1]])
    means = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1])
    e = torch.tensor([[0.0, 1.0, 0.0]])
    expected = torch.cat([q - p, q - e, p - e, q - means[1:2], p - means[1:2]], dim=-1)
    torch.testing.assert_close(geometry_features(q, p, labels, means), expected)
    torch.testing.assert_close(geometry_features(q, p, labels, None), expected[:, :9])


class Linear(nn.Module):
    """A linear student f(x) = x W (no buffers), simple enough for a float64 look-ahead by hand."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def tgeo_objective(**overrides) -> TGeoKD:
    settings = dict(temperature=2.0, hidden=5, held_out_fraction=0.25, outer_lr=1e-2, lookahead_lr=0.3, inter_sample=False, split_seed=0)
    return TGeoKD(get("fkl"), **(settings | overrides))


def vector_batches(seed: int, count: int, size: int, features: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input": torch.randn(size, features, generator=g), "label": torch.randint(0, C, (size,), generator=g),
             "index": torch.arange(size) + i * size} for i in range(count)]


class Dataset(list):
    """A list of batches that reports the number of samples, as a DataLoader's dataset does."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        super().__init__(batches)
        self.dataset = range(sum(len(batch["label"]) for batch in batches))


def test_tgeo_loss_fuses_ce_and_kd_per_sample_on_the_training_rows_only() -> None:
    g = torch.Generator().manual_seed(50)
    student, teacher = Linear(torch.randn(4, C, generator=g)), Linear(torch.randn(4, C, generator=g))
    batches = Dataset(vector_batches(51, count=2, size=8))
    objective = tgeo_objective()
    objective.prepare(context_for(student, teacher, batches))
    assert objective.held_out.sum().item() == 4 and objective.held_out.shape == (16,)
    batch = batches[0]
    zs = student(batch["input"])
    zt = teacher(batch["input"]).detach()
    loss, logs = objective({"logits": zs, "teacher_logits": zt}, batch)  # also takes the outer step
    with torch.no_grad():
        delta = geometry_features(zs.softmax(-1), zt.softmax(-1), batch["label"], None)
        alpha = torch.sigmoid(objective.fusion(delta)).squeeze(-1).double()
    train = ~objective.held_out[batch["index"]]
    zs64 = as64(zs)
    ce = -torch.log(softmax64(zs64)[torch.arange(8), batch["label"]])
    kd = 4.0 * kl64(softmax64(zt.double() / 2), softmax64(zs64 / 2))
    reference = ((1 - alpha) * ce + alpha * kd)[train].mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, zs)
    (ref_grad,) = torch.autograd.grad(reference, zs64)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert (grad[~train] == 0).all()  # held-out rows never train the student
    assert {"tgeo_outer_ce", "ce", "kd", "tgeo_alpha"} <= set(logs)


def test_tgeo_hypergradient_matches_a_float64_look_ahead_and_finite_differences() -> None:
    g = torch.Generator().manual_seed(52)
    W, Wt = torch.randn(4, C, generator=g), torch.randn(4, C, generator=g)
    x, xh = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    y, yh = torch.randint(0, C, (6,), generator=g), torch.randint(0, C, (3,), generator=g)
    eta, T = 0.3, 2.0
    fusion = nn.Sequential(nn.Linear(3 * C, 5), nn.ReLU(), nn.Linear(5, 1))
    student = Linear(W)
    zs, zt = student(x), x @ Wt
    ce = F.cross_entropy(zs, y, reduction="none")
    kd = T**2 * get("fkl")(zs, zt, temperature=T, reduction="none")
    delta = geometry_features(zs.detach().softmax(-1), zt.softmax(-1), y, None)
    outer = lookahead_outer_loss(student, fusion, ce, kd, delta, xh, yh, eta)
    grads = torch.autograd.grad(outer, list(fusion.parameters()))

    def reference(params: list[torch.Tensor]) -> torch.Tensor:
        w1, b1, w2, b2 = params
        W64 = W.double().requires_grad_()
        logits = x.double() @ W64
        alpha = torch.sigmoid(torch.relu(delta.double() @ w1.T + b1) @ w2.T + b2).squeeze(-1)
        ce64_ = -torch.log(softmax64(logits)[torch.arange(6), y])
        kd64 = T**2 * kl64(softmax64((x.double() @ Wt.double()) / T), softmax64(logits / T))
        (step,) = torch.autograd.grad(((1 - alpha) * ce64_ + alpha * kd64).mean(), W64, create_graph=True)
        ahead = xh.double() @ (W64 - eta * step)
        return -torch.log(softmax64(ahead)[torch.arange(3), yh]).mean()

    params64 = [p.detach().double().requires_grad_() for p in fusion.parameters()]
    value = reference(params64)
    assert outer.item() == pytest.approx(value.item(), rel=1e-5)
    for grad, ref in zip(grads, torch.autograd.grad(value, params64)):
        torch.testing.assert_close(grad.double(), ref, rtol=1e-4, atol=1e-7)
    h, bumped = 1e-6, [p.detach().clone() for p in params64]  # and against central differences on the output bias
    bumped[3] += h
    plus = reference(bumped)
    bumped[3] -= 2 * h
    assert grads[3].item() == pytest.approx(((plus - reference(bumped)) / (2 * h)).item(), rel=1e-4, abs=1e-8)


def test_tgeo_outer_step_moves_the_fusion_network_but_the_student_loss_does_not() -> None:
    g = torch.Generator().manual_seed(53)
    student, teacher = Linear(torch.randn(4, C, generator=g)), Linear(torch.randn(4, C, generator=g))
    batches = Dataset(vector_batches(54, count=1, size=16))
    objective = tgeo_objective(inter_sample=True)
    objective.prepare(context_for(student, teacher, batches))
    assert objective.class_means.shape == (C, C) and objective.fusion[0].in_features == 5 * C
    before = [p.detach().clone() for p in objective.fusion.parameters()]
    batch = batches[0]
    loss, _ = objective({"logits": student(batch["input"]), "teacher_logits": teacher(batch["input"]).detach()}, batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.fusion.parameters()))
    loss.backward()
    assert all(p.grad is None for p in objective.fusion.parameters())
    assert student.weight.grad is not None


def test_tgeo_takes_per_sample_divergences_only() -> None:
    assert "sinkhorn" not in PER_SAMPLE and {"fkl", "rkl", "js", "tvd"} <= set(PER_SAMPLE)
    with pytest.raises(ConfigError, match="takes the divergences"):
        tgeo_objective().__class__(get("sinkhorn"), temperature=2.0, hidden=5, held_out_fraction=0.1, outer_lr=1e-3,
                                   lookahead_lr=0.1, inter_sample=False, split_seed=0)
    with pytest.raises(ConfigError, match="objective.held_out_fraction"):
        tgeo_objective(held_out_fraction=1.0)


# --- MCMI -------------------------------------------------------------------------------------


class Logits(nn.Module):
    """A 'model' whose logits are its inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_centroids_and_cmi_match_the_per_sample_definition() -> None:
    g = torch.Generator().manual_seed(60)
    logits = 2 * torch.randn(12, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    loader = [{"input": logits[:5], "label": labels[:5]}, {"input": logits[5:], "label": labels[5:]}]
    stats = centroid_statistics(Logits(), loader, 4, torch.device("cpu"))
    p = softmax64(logits.double())
    centroids = torch.stack([p[labels == c].mean(dim=0) for c in range(4)])
    torch.testing.assert_close(stats.centroids, centroids.float())
    cmi = kl64(p, centroids[labels]).mean()
    assert stats.cmi == pytest.approx(cmi.item(), rel=1e-9) and stats.cmi > 0


def test_cmi_is_zero_for_a_teacher_that_outputs_its_class_centroid() -> None:
    """A teacher whose prediction is the same for every sample of a class outputs its class centroid: CMI = 0."""
    class_logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(61))
    labels = torch.tensor([2, 0, 1, 3, 3, 0, 2, 1])
    teacher = nn.Embedding.from_pretrained(class_logits)  # input: the label itself
    stats = centroid_statistics(teacher, [{"input": labels, "label": labels}], 4, torch.device("cpu"))
    torch.testing.assert_close(stats.centroids, class_logits.softmax(dim=-1))
    assert abs(stats.cmi) < 1e-12


def test_centroids_need_every_class() -> None:
    with pytest.raises(ConfigError, match=r"none for classes \[3\]"):
        centroid_statistics(Logits(), [{"input": torch.zeros(3, 4), "label": torch.tensor([0, 1, 2])}], 4, torch.device("cpu"))


def official_mcmi_loss64(output: torch.Tensor, target: torch.Tensor, centroids: torch.Tensor, lam: float) -> torch.Tensor:
    """ICLRMCMI `losses.py` `CE_KL_loss` with `param = [1, -λ]` (helper/loops.py), re-written in float64."""
    ce = F.cross_entropy(output, target)
    kl = F.kl_div(centroids.log(), F.log_softmax(output, 1), reduction="batchmean", log_target=True)
    return 1 * ce + (-lam) * kl


def mcmi(update: str = "once", decay: float = 0.9) -> MCMI:
    return MCMI(weight=0.2, centroid_update=update, ema_decay=decay, centroid_mode="eval")


def test_mcmi_loss_reproduces_the_official_ce_minus_lambda_kl() -> None:
    zs, _, labels = random_logits(62)
    objective = mcmi()
    objective.centroids = torch.rand(C, C, generator=torch.Generator().manual_seed(63)) + 0.1
    objective.centroids /= objective.centroids.sum(dim=-1, keepdim=True)
    objective.recompute = lambda: pytest.fail("`once` never recomputes")
    loss, logs = objective({"logits": zs, "progress": Progress(3, 10)}, {"label": labels})
    zs64 = as64(zs)
    reference = official_mcmi_loss64(zs64, labels, objective.centroids[labels].double(), 0.2)
    assert_matches(loss, reference, [zs], [zs64])
    assert logs["cmi_batch"].item() == pytest.approx(kl64(softmax64(zs64), objective.centroids[labels].double()).mean().item(), rel=1e-5)


def test_mcmi_prepare_computes_the_centroids_of_the_model_being_fine_tuned() -> None:
    g = torch.Generator().manual_seed(64)
    batches = [{"input": torch.randn(8, C, generator=g), "label": torch.arange(8) % C}]
    objective = mcmi()
    objective.prepare(context_for(Logits(), None, batches))
    torch.testing.assert_close(objective.centroids, centroid_statistics(Logits(), batches, C, torch.device("cpu")).centroids)


def test_mcmi_per_epoch_recomputes_the_centroids_when_the_epoch_changes() -> None:
    zs = torch.randn(2 * C, C, generator=torch.Generator().manual_seed(65))
    labels = torch.arange(2 * C) % C
    objective = mcmi("per_epoch")
    calls = []

    def recompute():
        calls.append(1)
        return centroid_statistics(Logits(), [{"input": zs.detach(), "label": labels}], C, torch.device("cpu"))

    objective.recompute, objective.centroids = recompute, torch.full((C, C), 1 / C)
    for epoch in (0, 0, 1, 1, 2):
        objective({"logits": zs, "progress": Progress(epoch, 10)}, {"label": labels})
    assert len(calls) == 2


def test_mcmi_ema_moves_the_centroids_of_the_batch_classes_towards_their_mean() -> None:
    zs, _, labels = random_logits(66)
    objective = mcmi("ema", decay=0.9)
    start = torch.full((C, C), 1 / C)
    objective.recompute, objective.centroids = (lambda: pytest.fail("ema never recomputes")), start.clone()
    objective({"logits": zs, "progress": Progress(0, 10)}, {"label": labels})
    p = zs.detach().softmax(dim=-1)
    for c in range(C):
        if (labels == c).any():
            expected = 0.9 * start[c] + 0.1 * p[labels == c].mean(dim=0)
            torch.testing.assert_close(objective.centroids[c], expected / expected.sum())
        else:
            torch.testing.assert_close(objective.centroids[c], start[c])


def test_mcmi_rejects_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="teacher.mcmi.objective.centroid_update"):
        MCMI(weight=0.2, centroid_update="sometimes", ema_decay=0.9, centroid_mode="eval")
    with pytest.raises(ConfigError, match="teacher.mcmi.objective.weight"):
        MCMI(weight=-1.0, centroid_update="once", ema_decay=0.9, centroid_mode="eval")
    assert math.isfinite(mcmi().ema_decay)
