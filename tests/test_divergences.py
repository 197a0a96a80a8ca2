"""Per-position divergences against plain float64 references, gradchecks, and their mathematical properties.

Each reference below is written from the formula alone: probabilities from `torch.softmax` in float64
and plain sums, nothing imported from kdlab. `CASES` covers every registry name (a divergence added
without a reference fails `test_every_divergence_has_a_reference_case`).
"""

import itertools
import math

import pytest
import torch

from kdlab.divergences import REGISTRY, get

# ---------------------------------------------------------------- references (p = teacher, q = student)


def kl_ref(a, b):
    return (a * (a.log() - b.log())).sum(-1)


def gjsd_ref(p, q, beta):
    if beta == 0:
        return kl_ref(p, q)
    if beta == 1:
        return kl_ref(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl_ref(p, m) + (1 - beta) * kl_ref(q, m)


def ab_ref(p, q, alpha, beta):
    if alpha == 0 and beta == 0:
        return 0.5 * ((q.log() - p.log()) ** 2).sum(-1)
    if beta == 0:
        pa, qa = p**alpha, q**alpha
        return (pa * (pa / qa).log() - pa + qa).sum(-1) / alpha**2
    if alpha == 0:
        pb, qb = p**beta, q**beta
        return (qb * (qb / pb).log() - qb + pb).sum(-1) / beta**2
    if alpha + beta == 0:
        ratio = q**alpha / p**alpha
        return (ratio.log() + 1 / ratio - 1).sum(-1) / alpha**2
    s = alpha + beta
    return -(p**alpha * q**beta - alpha / s * p**s - beta / s * q**s).sum(-1) / (alpha * beta)


F_REF = {
    "kl": lambda u: u * u.log(),
    "reverse_kl": lambda u: -u.log(),
    "js": lambda u: u * u.log() - (u + 1) * ((u + 1) / 2).log(),
    "tv": lambda u: 0.5 * (u - 1).abs(),
    "pearson": lambda u: (u - 1) ** 2,
    "neyman": lambda u: (1 - u) ** 2 / u,
}

REFERENCES = {
    "fkl": lambda p, q, drop_teacher_entropy=False: -(p * q.log()).sum(-1) if drop_teacher_entropy else kl_ref(p, q),
    "rkl": lambda p, q: kl_ref(q, p),
    "jeffreys": lambda p, q: kl_ref(p, q) + kl_ref(q, p),
    "js": lambda p, q: gjsd_ref(p, q, 0.5),
    "gjsd": lambda p, q, beta=0.5: gjsd_ref(p, q, beta),
    "skl": lambda p, q, alpha=0.1: kl_ref(p, alpha * p + (1 - alpha) * q),
    "srkl": lambda p, q, alpha=0.1: kl_ref(q, alpha * q + (1 - alpha) * p),
    "tvd": lambda p, q: 0.5 * (p - q).abs().sum(-1),
    "hellinger": lambda p, q: 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1),
    "chi2": lambda p, q: ((p - q) ** 2 / q).sum(-1),
    "cs": lambda p, q: -((p * q).sum(-1) / ((p * p).sum(-1) * (q * q).sum(-1)).sqrt()).log(),
    "alpha": lambda p, q, alpha=0.5: (
        kl_ref(p, q) if alpha == 1 else kl_ref(q, p) if alpha == 0 else (1 - (p**alpha * q ** (1 - alpha)).sum(-1)) / (alpha * (1 - alpha))
    ),
    "ab": lambda p, q, alpha=0.2, beta=0.7: ab_ref(p, q, alpha, beta),
    "fdiv": lambda p, q, f="js": (q * F_REF[f](p / q)).sum(-1),
}
REFERENCES["kl"] = REFERENCES["fkl"]

# (name, params): defaults, every limit branch and non-default values. `unbounded` cases have a
# negative power, so they are infinite (not just large) where a probability underflows to 0.
CASES = [(name, {}) for name in REGISTRY if name != "sinkhorn"] + [
    ("fkl", {"drop_teacher_entropy": True}),
    *[("gjsd", {"beta": b}) for b in (0.0, 0.3, 1.0)],
    *[("skl", {"alpha": a}) for a in (0.0, 0.4, 1.0)],
    *[("srkl", {"alpha": a}) for a in (0.0, 0.4, 1.0)],
    *[("alpha", {"alpha": a}) for a in (0.0, 0.3, 1.0, 1.7, -0.5)],
    *[("ab", {"alpha": a, "beta": b}) for a, b in ((0, 0), (1, 0), (0, 1), (0.8, 0), (0, 0.6), (0.5, -0.5), (0.8, 0.3), (-0.3, 1.2))],
    *[("fdiv", {"f": f}) for f in F_REF],
]
UNBOUNDED = {("alpha", (("alpha", 1.7),)), ("alpha", (("alpha", -0.5),)), ("ab", (("alpha", 0.5), ("beta", -0.5))), ("ab", (("alpha", -0.3), ("beta", 1.2)))}


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def is_unbounded(case):
    return (case[0], tuple(sorted(case[1].items()))) in UNBOUNDED


def reference(name, params, student, teacher, mask, temperature, reduction):
    p = torch.softmax(teacher.double() / temperature, -1)
    q = torch.softmax(student.double() / temperature, -1)
    values = REFERENCES[name](p, q, **params)
    if mask is not None:
        values = values * mask
    if reduction == "none":
        return values
    count = values.numel() if mask is None else mask.sum()
    return values.sum() if reduction == "sum" else values.sum() / max(count, 1)


def logits(*shape, scale=3.0, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(dtype)


def pair(shape, dtype=torch.float32, seed=0):
    return logits(*shape, dtype=dtype, seed=seed).requires_grad_(), logits(*shape, dtype=dtype, seed=seed + 1).requires_grad_()


def random_mask(shape, seed=0):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask.view(-1)[0] = True
    return mask


def grads(value, *inputs):
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).view(value.shape)
    return torch.autograd.grad((value * weights).sum(), inputs, materialize_grads=True)


# ---------------------------------------------------------------- values and gradients vs the references


def test_every_divergence_has_a_reference_case():
    covered = {name for name, _ in CASES} | {"sinkhorn"}  # sinkhorn: tests/test_divergences_sinkhorn.py
    assert set(REGISTRY) <= covered and set(REGISTRY) - {"sinkhorn"} <= set(REFERENCES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_float64_reference_in_values_and_gradients(case):
    name, params = case
    fn = get(name, **params)
    settings = (((4, 7), None, 1.0), ((2, 3, 9), random_mask((2, 3)), 2.5))
    for (shape, mask, temperature), reduction in itertools.product(settings, ("none", "sum", "mean")):
        student, teacher = pair(shape)
        value = fn(student, teacher, mask=mask, temperature=temperature, reduction=reduction)
        s64, t64 = student.detach().double().requires_grad_(), teacher.detach().double().requires_grad_()
        expected = reference(name, params, s64, t64, mask, temperature, reduction)
        assert value.dtype == torch.float32 and value.shape == expected.shape
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads(value, student, teacher), grads(expected, s64, t64)):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_inputs_are_upcast(case):
    name, params = case
    student, teacher = pair((3, 4, 50), dtype=torch.bfloat16)
    value = get(name, **params)(student, teacher, reduction="sum")
    expected = reference(name, params, student.detach(), teacher.detach(), None, 1.0, "sum")
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-4)
    assert all(g.dtype == torch.bfloat16 and g.isfinite().all() for g in grads(value, student, teacher))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_float64(case):
    name, params = case
    student, teacher = pair((3, 5), dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    fn = get(name, **params)
    assert torch.autograd.gradcheck(lambda s, t: fn(s, t, mask=mask, temperature=1.5, reduction="none"), (student, teacher))


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nonnegative_and_zero_for_identical_inputs(case):
    name, params = case
    fn = get(name, **params)
    student, teacher = logits(16, 40, seed=3), logits(16, 40, seed=4)
    assert (fn(student, teacher, reduction="none") >= -1e-6).all()
    same = fn(teacher, teacher.clone(), reduction="none")
    if name == "fkl" and params.get("drop_teacher_entropy"):  # the cross-entropy form gives H(p)
        p = teacher.double().softmax(-1)
        torch.testing.assert_close(same.double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)
    else:
        assert same.abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["js", "tvd", "hellinger", "jeffreys", "cs"])
def test_symmetric(name):
    student, teacher = logits(8, 30, seed=5), logits(8, 30, seed=6)
    fn = get(name)
    torch.testing.assert_close(fn(student, teacher, reduction="none"), fn(teacher, student, reduction="none"), rtol=1e-6, atol=1e-7)


def per_position(name, student, teacher, **params):
    return get(name, **params)(student, teacher, reduction="none")


def test_limits_and_identities():
    s, t = logits(6, 25, scale=1.0, dtype=torch.float64, seed=7), logits(6, 25, scale=1.0, dtype=torch.float64, seed=8)
    fkl, rkl = per_position("fkl", s, t), per_position("rkl", s, t)
    close = lambda a, b, rtol=1e-9: torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)  # noqa: E731
    small = 1e-6
    # GJSD (TRL convention): beta = 0 / 1 are fkl / rkl, the limits of GJSD_beta / beta and GJSD_beta / (1 - beta).
    close(per_position("gjsd", s, t, beta=0.0), fkl)
    close(per_position("gjsd", s, t, beta=1.0), rkl)
    close(per_position("gjsd", s, t, beta=small) / small, fkl, rtol=1e-4)
    close(per_position("gjsd", s, t, beta=1 - small) / small, rkl, rtol=1e-4)
    close(per_position("js", s, t), per_position("gjsd", s, t, beta=0.5))
    # Amari alpha: limits at 0 and 1 and 4 x Hellinger at 1/2.
    close(per_position("alpha", s, t, alpha=1.0), fkl)
    close(per_position("alpha", s, t, alpha=0.0), rkl)
    close(per_position("alpha", s, t, alpha=1 - small), fkl, rtol=1e-4)
    close(per_position("alpha", s, t, alpha=small), rkl, rtol=1e-4)
    hellinger = per_position("hellinger", s, t)
    close(per_position("alpha", s, t, alpha=0.5), 4 * hellinger)
    # Alpha-beta: (1, 0) = fkl, (0, 1) = rkl, (1/2, 1/2) = 4 Hellinger; every branch is the limit of the general formula.
    close(per_position("ab", s, t, alpha=1.0, beta=0.0), fkl)
    close(per_position("ab", s, t, alpha=0.0, beta=1.0), rkl)
    close(per_position("ab", s, t, alpha=0.5, beta=0.5), 4 * hellinger)
    for (a, b), (a_near, b_near) in {
        (0.0, 0.6): (small, 0.6),
        (0.8, 0.0): (0.8, small),
        (0.5, -0.5): (0.5, -0.5 + small),
        (0.0, 0.0): (small, small),
    }.items():
        close(per_position("ab", s, t, alpha=a_near, beta=b_near), per_position("ab", s, t, alpha=a, beta=b), rtol=1e-4)
    # Skew KL: alpha = 0 is fkl / rkl, and continuous there.
    close(per_position("skl", s, t, alpha=0.0), fkl)
    close(per_position("srkl", s, t, alpha=0.0), rkl)
    close(per_position("skl", s, t, alpha=small), fkl, rtol=1e-4)
    # f-divergences name the divergences they equal.
    close(per_position("fdiv", s, t, f="kl"), fkl)
    close(per_position("fdiv", s, t, f="reverse_kl"), rkl)
    close(per_position("fdiv", s, t, f="js"), 2 * per_position("js", s, t))
    close(per_position("fdiv", s, t, f="tv"), per_position("tvd", s, t))
    close(per_position("fdiv", s, t, f="pearson"), per_position("chi2", s, t))
    close(per_position("fdiv", s, t, f="neyman"), per_position("chi2", t, s))
    close(per_position("jeffreys", s, t), fkl + rkl)


@pytest.mark.parametrize("case", [c for c in CASES if not is_unbounded(c)], ids=case_id)
def test_extreme_and_minus_inf_logits_give_finite_values_and_gradients(case):
    name, params = case
    fn = get(name, **params)
    signs = torch.randint(0, 2, (4, 3, 12), generator=torch.Generator().manual_seed(9)) * 2 - 1
    student = (1e4 * signs).float().requires_grad_()
    teacher = (-1e4 * signs.roll(1, -1)).float().requires_grad_()
    for s, t in ((student, teacher), (student.detach().clone().requires_grad_(), logits(4, 3, 12, seed=10).requires_grad_())):
        with torch.no_grad():
            s[..., :2] = -math.inf  # masked vocabulary on both sides
            t[..., 2] = -math.inf  # masked on one side only
        value = fn(s, t, reduction="sum")
        assert value.isfinite()
        assert all(g.isfinite().all() for g in grads(value, s, t))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_minus_inf_columns_equal_dropping_those_columns(case):
    name, params = case
    fn = get(name, **params)
    student, teacher = logits(5, 9, seed=11), logits(5, 9, seed=12)
    masked_student, masked_teacher = student.clone(), teacher.clone()
    masked_student[:, [1, 4]] = -math.inf
    masked_teacher[:, [1, 4]] = -math.inf
    masked_teacher[:, 6] = -math.inf  # one side only: the entry is dropped on both sides
    keep = [0, 2, 3, 5, 7, 8]
    expected = fn(student[:, keep], teacher[:, keep], reduction="none")
    torch.testing.assert_close(fn(masked_student, masked_teacher, reduction="none"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_masked_positions_do_not_matter(name):
    fn = get(name)
    student, teacher = pair((3, 4, 10), seed=13)
    mask = random_mask((3, 4), seed=14)
    noise = torch.where(mask[..., None], 0.0, 5 * logits(3, 4, 10, seed=15))
    for reduction in ("none", "sum", "mean"):
        value = fn(student, teacher, mask=mask, reduction=reduction)
        perturbed = fn(student + noise, teacher - noise, mask=mask, reduction=reduction)
        torch.testing.assert_close(perturbed, value, rtol=1e-6, atol=1e-7)
        grad_student, grad_teacher = grads(value, student, teacher)
        assert (grad_student[~mask] == 0).all() and (grad_teacher[~mask] == 0).all()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_mean_over_no_counted_position_is_zero_with_zero_gradient(name):
    student, teacher = pair((2, 3, 6), seed=16)
    value = get(name)(student, teacher, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert value.item() == 0.0
    assert all((g == 0).all() for g in grads(value, student, teacher))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expm1_from_exp_log_matches_torch_in_values_and_gradients(dtype):
    from kdlab.divergences._core import expm1_from_exp_log as expm1  # what the fused kernels compute

    tiny = torch.logspace(-12, 0, 2001, dtype=torch.float64)
    grid = torch.cat([torch.linspace(-110, 80, 40001, dtype=torch.float64), tiny, -tiny, torch.zeros(1, dtype=torch.float64)])
    x = grid.to(dtype).requires_grad_()
    value = expm1(x)
    (gradient,) = torch.autograd.grad(value.sum(), x)
    exact = x.detach().double()
    ulps = 4 * torch.finfo(dtype).eps
    assert torch.allclose(value.double(), torch.expm1(exact), rtol=ulps, atol=0)
    normal = exact.exp() > 1e3 * torch.finfo(dtype).tiny  # e^x itself representable without underflow
    assert torch.allclose(gradient.double()[normal], exact.exp()[normal], rtol=ulps, atol=0)
    huge = torch.tensor([-1e30, 1e30, 1e4], dtype=dtype, requires_grad=True)  # masked-vocabulary scale log-ratios
    (gradient,) = torch.autograd.grad(expm1(huge).sum(), huge)
    assert expm1(huge.detach()).tolist() == torch.expm1(huge.detach()).tolist()
    assert not gradient.isnan().any()
