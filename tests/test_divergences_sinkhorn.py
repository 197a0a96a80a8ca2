"""The batch-level Sinkhorn divergence against SinKD's algorithm written plainly, POT, and its OT properties;
its fast parts (matrix-vector iterations with a hand-written reverse pass, the compiled L1 cost) against
the loops autograd differentiates and `torch.cdist`."""

import importlib
import math
import warnings

import pytest
import torch

from kdlab.divergences import entropic_plan, get

sinkhorn_module = importlib.import_module("kdlab.divergences.sinkhorn")


def logits(*shape, scale=3.0, dtype=torch.float64, seed=0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def sinkd_code_value(student, teacher, temperature, epsilon, n_iters, entropic=False, detach_plan=False):
    """SinKD's loss.py, restated: L1 cost between the B student and B teacher rows, P = exp(-C/eps)
    normalised over rows then columns n_iters times (unit row and column sums, total mass B); per-row
    costs sum_j P_ij C_ij. With entropic=True the uniform-marginal plan's entropy term is added."""
    q, p = torch.softmax(student.double() / temperature, -1), torch.softmax(teacher.double() / temperature, -1)
    cost = (q[:, None, :] - p[None, :, :]).abs().sum(-1)
    plan = torch.exp(-cost / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(1, keepdim=True)
        plan = plan / plan.sum(0, keepdim=True)
    if detach_plan:
        plan = plan.detach()
    b = cost.shape[0]
    per_pair = cost + epsilon * (plan / b * b * b).log() if entropic else cost
    return (plan * per_pair).sum(1)


@pytest.mark.parametrize("domain", ["log", "plain"])
@pytest.mark.parametrize("detach_plan", [False, True])
def test_sum_is_sinkd_code_value_and_mean_is_uniform_marginal_distance(domain, detach_plan):
    student, teacher = logits(6, 10, seed=1).requires_grad_(), logits(6, 10, seed=2).requires_grad_()
    fn = get("sinkhorn", epsilon=0.1, n_iters=20, domain=domain, detach_plan=detach_plan)
    for reduction, reduce in (("none", lambda rows: rows), ("sum", torch.sum), ("mean", lambda rows: rows.sum() / 6)):
        value = fn(student, teacher, temperature=2.0, reduction=reduction)
        expected = reduce(sinkd_code_value(student, teacher, 2.0, 0.1, 20, detach_plan=detach_plan))
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
        for got, want in zip(torch.autograd.grad(value.sum(), (student, teacher)), torch.autograd.grad(expected.sum(), (student, teacher))):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_mask_selects_the_positions_that_form_the_point_clouds():
    student, teacher = logits(2, 4, 8, seed=3), logits(2, 4, 8, seed=4)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    value = get("sinkhorn")(student, teacher, mask=mask, reduction="none")
    rows = sinkd_code_value(student[mask], teacher[mask], 1.0, 0.1, 20)
    torch.testing.assert_close(value[mask], rows)
    assert (value[~mask] == 0).all()


@pytest.mark.parametrize("variant", ["entropic", "debiased"])
def test_entropic_and_debiased_variants(variant):
    student, teacher = logits(5, 7, seed=5), logits(5, 7, seed=6)
    value = get("sinkhorn", variant=variant, n_iters=50)(student, teacher, reduction="mean")

    def ot(x, y):
        return sinkd_code_value(x, y, 1.0, 0.1, 50, entropic=True).sum() / 5

    expected = ot(student, teacher)
    if variant == "debiased":
        expected = expected - 0.5 * (ot(student, student) + ot(teacher, teacher))
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)


def test_identical_inputs_positive_for_entropic_plans_zero_when_debiased_and_vanishing_with_epsilon():
    teacher = logits(6, 12, seed=7)
    for variant in ("cuturi_primal", "entropic"):
        assert get("sinkhorn", variant=variant)(teacher, teacher.clone()) > 1e-4  # the plan is not diagonal at eps = 0.1
    assert get("sinkhorn", variant="debiased")(teacher, teacher.clone()).abs() < 1e-12
    values = [get("sinkhorn", epsilon=eps, n_iters=300)(teacher, teacher.clone()).item() for eps in (0.1, 0.03, 0.01, 0.003)]
    assert values == sorted(values, reverse=True) and values[-1] < 1e-4


def test_log_domain_plan_marginals_converge():
    cost = torch.cdist(logits(7, 5, seed=8).softmax(-1), logits(9, 5, seed=9).softmax(-1), p=1)
    plan = entropic_plan(cost, epsilon=0.01, n_iters=300).exp()
    torch.testing.assert_close(plan.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((9,), 1 / 9, dtype=torch.float64), atol=1e-12, rtol=0)  # the last update is the columns'


def test_plain_domain_equals_log_domain():
    cost = torch.cdist(logits(6, 5, seed=10).softmax(-1), logits(6, 5, seed=11).softmax(-1), p=1)
    torch.testing.assert_close(entropic_plan(cost, 0.1, 20, "plain"), entropic_plan(cost, 0.1, 20, "log"))


@pytest.mark.parametrize("cost", ["l1", "l2", "sq_l2"])
def test_costs_give_finite_gradients_for_identical_inputs_and_pass_gradcheck(cost):
    teacher = logits(4, 6, seed=12)
    student = teacher.clone().requires_grad_()
    fn = get("sinkhorn", cost=cost, n_iters=5)
    assert torch.autograd.grad(fn(student, teacher), student)[0].isfinite().all()
    student, teacher = logits(4, 6, seed=13).requires_grad_(), logits(4, 6, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, t: fn(s, t, temperature=2.0, reduction="none"), (student, teacher))


def test_matches_pot_plan_and_distance_at_convergence():
    ot = pytest.importorskip("ot")
    student, teacher = logits(8, 6, scale=1.0, seed=15), logits(8, 6, scale=1.0, seed=16)
    q, p = student.softmax(-1), teacher.softmax(-1)
    cost = torch.cdist(q, p, p=1)
    uniform = torch.full((8,), 1 / 8, dtype=torch.float64)
    pot_plan = ot.sinkhorn(uniform, uniform, cost, reg=0.1, method="sinkhorn_log", numItermax=20000, stopThr=1e-15)
    torch.testing.assert_close(entropic_plan(cost, 0.1, 1000).exp(), pot_plan, rtol=1e-9, atol=1e-12)
    pot_distance = ot.sinkhorn2(uniform, uniform, cost, reg=0.1, method="sinkhorn_log", numItermax=20000, stopThr=1e-15)
    torch.testing.assert_close(get("sinkhorn", epsilon=0.1, n_iters=1000)(student, teacher), pot_distance, rtol=1e-9, atol=1e-12)


def plan_and_gradient(cost, epsilon, n_iters, domain, weights, plan=entropic_plan):
    """log P and d<exp(log P) + log P / 7, W>/dC for an upstream W that weights every entry differently."""
    cost = cost.detach().requires_grad_()
    log_plan = plan(cost, epsilon, n_iters, domain)
    return log_plan.detach(), torch.autograd.grad(((log_plan.exp() + log_plan / 7) * weights).sum(), cost)[0]


def loop_plan(cost, epsilon, n_iters, domain):
    """entropic_plan through the domain's own loop (autograd through every iteration)."""
    log_kernel = -cost / epsilon
    f, g = sinkhorn_module._iterate(log_kernel, n_iters, domain)
    return f[:, None] + log_kernel + g


@pytest.mark.parametrize("domain", ["log", "plain"])
def test_matrix_vector_iterations_and_their_reverse_pass_equal_the_loops_in_float64(domain):
    cost = torch.cdist(logits(7, 5, seed=17).softmax(-1), logits(9, 5, seed=18).softmax(-1), p=1) + 0.3
    weights = logits(7, 9, scale=1.0, seed=19)
    for n_iters in (1, 2, 20):
        fast, fast_grad = plan_and_gradient(cost, 0.1, n_iters, domain, weights)
        loop, loop_grad = plan_and_gradient(cost, 0.1, n_iters, domain, weights, plan=loop_plan)
        torch.testing.assert_close(fast, loop, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast_grad, loop_grad, rtol=1e-10, atol=1e-12)


def test_float32_fast_path_is_as_close_to_float64_as_the_float32_loop_at_b256():
    cost = torch.cdist(logits(256, 100, seed=20).softmax(-1), logits(256, 100, seed=21).softmax(-1), p=1)
    weights = logits(256, 256, scale=1.0, seed=22)
    exact, exact_grad = plan_and_gradient(cost, 0.1, 20, "log", weights, plan=loop_plan)
    for plan in (entropic_plan, loop_plan):
        value, grad = plan_and_gradient(cost.float(), 0.1, 20, "log", weights.float(), plan=plan)
        assert (value.double() - exact).norm() / exact.norm() < 1e-6
        assert (grad.double() - exact_grad).norm() / exact_grad.norm() < 2e-6


def test_a_kernel_beyond_the_float32_range_takes_the_domain_loop(monkeypatch):
    cost = torch.cdist(logits(6, 5, seed=23).softmax(-1), logits(8, 5, seed=24).softmax(-1), p=1).float()
    epsilon = 0.5 * (cost.max() - cost.min()).item() / sinkhorn_module.max_kernel_range(torch.float32)  # R = 2 R_max
    expected = loop_plan(cost, epsilon, 50, "log")
    monkeypatch.setattr(sinkhorn_module, "_Potentials", None)  # used here, the call would fail
    log_plan = entropic_plan(cost, epsilon, 50)
    torch.testing.assert_close(log_plan, expected)
    assert log_plan.isfinite().all()
    assert math.isclose(sinkhorn_module.max_kernel_range(torch.float32), 43.668, rel_tol=1e-4)


def test_compiled_l1_cost_equals_cdist_in_values_and_both_gradients(monkeypatch):
    """One compilation (dynamic shapes) serves both shapes; rows 0 of x and y are equal, so sign(0) = 0 is used."""
    monkeypatch.setattr(sinkhorn_module, "COMPILE_MIN_NUMEL", 0)
    monkeypatch.setattr(sinkhorn_module, "_l1_kernels", {})
    for n, m, vocab in ((5, 7, 33), (12, 3, 50)):
        x, y = logits(n, vocab, dtype=torch.float32, seed=n).softmax(-1), logits(m, vocab, dtype=torch.float32, seed=m + 1).softmax(-1)
        y[0] = x[0]
        weights = logits(n, m, scale=1.0, dtype=torch.float32, seed=25)
        results = []
        for cost in (sinkhorn_module.l1_cost, lambda a, b: torch.cdist(a, b, p=1)):
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
            value = cost(a, b)
            results.append((value, *torch.autograd.grad((value * weights).sum(), (a, b))))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert set(sinkhorn_module._l1_kernels) == {"cost", "grad"}


def test_a_compilation_failure_falls_back_to_cdist_with_one_warning(monkeypatch):
    monkeypatch.setattr(sinkhorn_module, "COMPILE_MIN_NUMEL", 0)
    monkeypatch.setattr(sinkhorn_module, "_l1_kernels", {})
    monkeypatch.setattr(sinkhorn_module, "_l1_failed", False)

    def no_backend(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("no compiler for this backend\nsecond line")

        return fails

    monkeypatch.setattr(torch, "compile", no_backend)
    x, y = logits(4, 6, dtype=torch.float32, seed=26).softmax(-1), logits(5, 6, dtype=torch.float32, seed=27).softmax(-1)
    with pytest.warns(RuntimeWarning, match=r"compiling the L1 cost failed \(RuntimeError: no compiler for this backend\); using torch.cdist") as caught:
        first = sinkhorn_module.l1_cost(x, y)
        second = sinkhorn_module.l1_cost(x, y)
    assert len(caught) == 1
    torch.testing.assert_close(first, torch.cdist(x, y, p=1), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.parametrize("setting", ["0", "eager"])
def test_kdlab_fused_off_or_eager_keeps_the_l1_cost_on_cdist(setting, monkeypatch):
    """`KDLAB_FUSED` is the one switch of kdlab's compiled kernels: the L1 cost never compiles under 0 or eager."""
    monkeypatch.setenv("KDLAB_FUSED", setting)
    monkeypatch.setattr(sinkhorn_module, "COMPILE_MIN_NUMEL", 0)
    monkeypatch.setattr(sinkhorn_module, "_l1_failed", False)
    monkeypatch.setattr(sinkhorn_module._L1, "apply", None)  # called here, the call would fail and warn
    x, y = logits(4, 6, dtype=torch.float32, seed=28).softmax(-1), logits(5, 6, dtype=torch.float32, seed=29).softmax(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(sinkhorn_module.l1_cost(x, y), torch.cdist(x, y, p=1), rtol=0, atol=0)
