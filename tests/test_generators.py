"""The f-divergence generators against kdlab's divergences (values and the policy-gradient identity,
in float64), their normalisation, and DPH-RL's official generator formulas on fixed inputs."""

import pytest
import torch

from kdlab.divergences import get
from kdlab.objectives.generators import NAMES, generator

CASES = [(name, {}) for name in NAMES if name != "alpha"] + [("alpha", {"alpha": a}) for a in (0.2, 0.5, 0.8, 0.0, 1.0, -0.5, 1.5)]
IDS = [f"{name}{params.get('alpha', '')}" for name, params in CASES]


def distributions(seed: int, size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator_ = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=generator_, dtype=torch.float64), torch.randn(size, generator=generator_, dtype=torch.float64)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_the_divergence_is_the_expectation_of_g_under_p(name: str, params: dict) -> None:
    """D(q, p) = Σ_x p(x) g(q(x)/p(x)) for kdlab's divergence `name` (student q first, target p second)."""
    g, _ = generator(name, params)
    for seed in range(3):
        q_logits, p_logits = distributions(seed)
        log_q, log_p = q_logits.log_softmax(-1), p_logits.log_softmax(-1)
        expected = get(name, **params)(q_logits.unsqueeze(0), p_logits.unsqueeze(0), reduction="sum")
        assert torch.allclose((log_p.exp() * g(log_q - log_p)).sum(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_the_policy_gradient_identity_holds(name: str, params: dict) -> None:
    """∇_θ D(q_θ, p) = E_{x~q}[g'(q/p) ∇_θ log q(x)] exactly (q = softmax(θ)), the identity f-DPG estimates."""
    _, derivative = generator(name, params)
    q_logits, p_logits = distributions(7)
    theta = q_logits.clone().requires_grad_(True)
    get(name, **params)(theta.unsqueeze(0), p_logits.unsqueeze(0), reduction="sum").backward()
    exact = theta.grad.clone()
    theta = q_logits.clone().requires_grad_(True)
    log_q = theta.log_softmax(-1)
    weights = log_q.exp().detach() * derivative(log_q.detach() - p_logits.log_softmax(-1))
    (weights * log_q).sum().backward()  # Σ_x q(x) g'(t) ∇ log q(x)
    assert torch.allclose(theta.grad, exact, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_g_is_normalised_and_g_prime_is_its_derivative(name: str, params: dict) -> None:
    g, derivative = generator(name, params)
    zero = torch.zeros(1, dtype=torch.float64)
    assert g(zero).abs().item() < 1e-12 and derivative(zero).abs().item() < 1e-12
    log_t = torch.linspace(-3, 3, 13, dtype=torch.float64).requires_grad_(True)
    g(log_t).sum().backward()  # d g / d log t = t g'(t)
    assert torch.allclose(log_t.grad, log_t.detach().exp() * derivative(log_t.detach()), atol=1e-9)
    assert (g(log_t.detach()) >= -1e-12).all()  # each sample's estimate is non-negative


# ---- DPH-RL's official generators (seamoke/DPH-RL verl/trainer/ppo/core_algos.py), written from their code ----
def official_low_var_kl(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    kl = (ref_logprob - logprob).clamp(-20, 20)
    return (kl.exp() - kl - 1).clamp(-10, 10)


def official_js_low_var(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    ratio = (logprob - ref_logprob).exp()
    return ratio * ratio.log() - (ratio + 1) * ((ratio + 1) / 2).log()


def official_alpha(logprob: torch.Tensor, ref_logprob: torch.Tensor, alpha: float) -> torch.Tensor:
    u = (logprob - ref_logprob).exp()
    return (u.pow(1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))


def test_the_rehearsal_generators_are_dph_rls_on_fixed_inputs() -> None:
    """u = π_θ/π₀ on stored tokens: fkl's g is the forward-mode k3 (`kl_penalty(logprob=π₀, ref_logprob=π_θ)`),
    js's g is half of `js_low_var` (kdlab's js is JS, the code's the 2·JS generator), alpha's is `alpha_divergence_f`."""
    torch.manual_seed(0)
    initial = torch.randn(50, dtype=torch.float64) - 2  # token log-probs of π₀
    policy = initial + 4 * torch.rand(50, dtype=torch.float64) - 2  # |log u| <= 2: the official clamps (k3 <= 10) are inactive
    for name, params, official in [("fkl", {}, official_low_var_kl(initial, policy)),
                                   ("js", {}, 0.5 * official_js_low_var(policy, initial)),
                                   ("alpha", {"alpha": 0.2}, official_alpha(policy, initial, 0.2))]:
        g, _ = generator(name, params)
        log_u = (policy - initial).requires_grad_(True)
        ours = g(log_u)
        reference_u = (policy - initial).requires_grad_(True)
        theirs = {"fkl": official_low_var_kl(initial, initial + reference_u),
                  "js": 0.5 * official_js_low_var(initial + reference_u, initial),
                  "alpha": official_alpha(initial + reference_u, initial, 0.2)}[name]
        assert torch.allclose(ours, official, rtol=1e-10, atol=1e-12)
        ours.sum().backward()
        theirs.sum().backward()
        assert torch.allclose(log_u.grad, reference_u.grad, rtol=1e-9, atol=1e-12)


def test_an_unknown_divergence_has_no_estimator() -> None:
    with pytest.raises(ValueError, match="no sample estimator"):
        generator("sinkhorn", {})
