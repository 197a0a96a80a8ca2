"""DPO, f-DPO, IPO and TDPO against float64 references written plainly here, on random log-probs."""

import math

import pytest
import torch

from kdlab.divergences import alpha as alpha_divergence
from kdlab.divergences import get
from kdlab.errors import ConfigError
from kdlab.objectives.preference import DPO, FDPO, IPO, SFT, dpo_loss, fdpo_score, ipo_loss
from kdlab.objectives.tdpo import TDPO, sequential_kl, tdpo_loss
from kdlab.tokens import token_logps

torch.manual_seed(0)
BETA = 0.1


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return -torch.log1p(torch.exp(-x))


# f(u) of docs/methods.md §1.8, written in u, for D_f(pi || pi_ref) = E_ref f(pi / pi_ref).
F_OF_U = {
    "rkl": lambda u: u * torch.log(u),
    "fkl": lambda u: -torch.log(u),
    "js": lambda u: u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2),
    "alpha": lambda u, a=0.3: (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1)),
}


def f_prime(name: str, u: torch.Tensor) -> torch.Tensor:
    """f'(u) by autograd of the plain f, float64."""
    u = u.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F_OF_U[name](u).sum(), u)
    return grad


def ratios(n: int = 64, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    return (scale * torch.randn(n, dtype=torch.float64)).requires_grad_(True), (scale * torch.randn(n, dtype=torch.float64)).requires_grad_(True)


def test_dpo_matches_the_paper_formula_values_and_gradients() -> None:
    chosen, rejected = ratios()
    losses, logits = dpo_loss(chosen, rejected, beta=BETA)
    reference = -log_sigmoid(BETA * (chosen - rejected))
    torch.testing.assert_close(losses, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, BETA * (chosen - rejected))
    grads = torch.autograd.grad(losses.sum(), (chosen, rejected))
    reference_grads = torch.autograd.grad(reference.sum(), (chosen, rejected))
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("divergence", ["rkl", "fkl", "js", "alpha"])
def test_fdpo_score_is_f_prime_up_to_a_constant(divergence: str) -> None:
    """s(ρ_w) − s(ρ_l) = f'(u_w) − f'(u_l), u = e^ρ, with f' by autograd of the table's f."""
    rho_w, rho_l = (2 * torch.randn(32, dtype=torch.float64) for _ in range(2))
    ours = fdpo_score(rho_w, divergence, alpha=0.3) - fdpo_score(rho_l, divergence, alpha=0.3)
    expected = f_prime(divergence, rho_w.exp()) - f_prime(divergence, rho_l.exp())
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("divergence", ["fkl", "js", "alpha"])
def test_fdpo_loss_values_and_gradients(divergence: str) -> None:
    chosen, rejected = ratios(scale=2.0)
    losses, _ = dpo_loss(chosen, rejected, beta=BETA, divergence=divergence, alpha=0.3)
    reference = -log_sigmoid(BETA * (f_prime(divergence, chosen.exp()) - f_prime(divergence, rejected.exp())))
    torch.testing.assert_close(losses, reference, rtol=1e-10, atol=1e-12)
    # gradient: d/dρ f'(e^ρ) = f''(u) u, checked by finite differences of the plain formula
    grad_w, grad_l = torch.autograd.grad(losses.sum(), (chosen, rejected))
    eps = 1e-6
    plain = lambda w, l: -log_sigmoid(BETA * (f_prime(divergence, w.exp()) - f_prime(divergence, l.exp())))  # noqa: E731
    fd_w = (plain(chosen.detach() + eps, rejected.detach()) - plain(chosen.detach() - eps, rejected.detach())) / (2 * eps)
    fd_l = (plain(chosen.detach(), rejected.detach() + eps) - plain(chosen.detach(), rejected.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(grad_w, fd_w, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grad_l, fd_l, rtol=1e-5, atol=1e-8)


def test_fdpo_reverse_kl_is_exactly_dpo() -> None:
    chosen, rejected = (torch.randn(256) * 5 for _ in range(2))
    fdpo, _ = dpo_loss(chosen, rejected, beta=0.25, divergence="rkl")
    dpo = -torch.nn.functional.logsigmoid(0.25 * (chosen - rejected))
    assert (fdpo - dpo).abs().max() < 1e-6


def test_fdpo_alpha_limits_and_trl_mapping() -> None:
    """α → 1 is forward KL; TRL's current α' form (u^{α'−1} − 1)/(α' − 1) is the paper's α = 1 − α' (docs/methods.md §12.2)."""
    rho = torch.linspace(-4, 4, 17, dtype=torch.float64)
    torch.testing.assert_close(fdpo_score(rho, "alpha", alpha=1 - 1e-9), fdpo_score(rho, "fkl"), rtol=1e-6, atol=1e-6)
    for paper_alpha in (0.3, 0.5, 0.7):
        trl_alpha = 1 - paper_alpha
        trl = (torch.exp((trl_alpha - 1) * rho) - 1) / (trl_alpha - 1)
        torch.testing.assert_close(fdpo_score(rho, "alpha", alpha=paper_alpha) + 1 / paper_alpha, trl)


def test_fdpo_alpha_regulariser_is_the_librarys_alpha_divergence() -> None:
    """The paper's D_f(π‖π_ref) with the α-family f is `kdlab.divergences.alpha(π, π_ref, alpha=α)`: same α, reference as teacher."""
    policy, reference = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    pi, pi_ref = policy.softmax(-1), reference.softmax(-1)
    for a in (0.3, 0.7):
        plain = (pi_ref * F_OF_U["alpha"](pi / pi_ref, a)).sum(-1)
        torch.testing.assert_close(alpha_divergence(policy, reference, alpha=a, reduction="none").double(), plain, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("divergence", ["fkl", "alpha"])
def test_fdpo_is_finite_for_extreme_log_ratios(divergence: str) -> None:
    chosen = torch.tensor([-500.0, 0.0, 500.0], requires_grad=True)
    rejected = torch.tensor([500.0, -500.0, 0.0], requires_grad=True)
    losses, _ = dpo_loss(chosen, rejected, divergence=divergence)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_unsupported_divergences_and_parameters_fail_clearly() -> None:
    with pytest.raises(ConfigError, match=r"f-DPO takes the divergences rkl\|fkl\|js\|alpha, got Divergence\(name='tvd'"):
        FDPO(get("tvd"), beta=0.1, exp_clamp=80.0)
    with pytest.raises(ConfigError, match="f-DPO supports"):
        fdpo_score(torch.zeros(1), "tvd")
    with pytest.raises(ConfigError, match="0 < divergence.alpha < 1"):
        FDPO(get("alpha", alpha=1.5), beta=0.1, exp_clamp=80.0)
    with pytest.raises(ConfigError, match="beta"):
        DPO(beta=0.0)
    with pytest.raises(ConfigError, match="variant"):
        TDPO(beta=0.1, alpha=0.5, variant="tdpo3")
    assert FDPO(get("kl"), beta=0.1, exp_clamp=80.0).divergence.name == "fkl"  # the library's alias
    assert DPO(beta=0.1).used_divergence() == get("rkl") and TDPO(beta=0.1, alpha=0.5, variant="tdpo2").used_divergence() == get("fkl")


def test_fdpo_with_reverse_kl_is_dpo() -> None:
    policy, reference, batch = lm_batch()
    outputs = {"logits": policy, "ref_logps": plain_sequence_logps(reference, batch["labels"])}
    torch.testing.assert_close(FDPO(get("rkl"), beta=BETA, exp_clamp=80.0)(outputs, batch)[0], DPO(beta=BETA)(outputs, batch)[0])


def test_ipo_matches_the_paper_formula() -> None:
    chosen, rejected = ratios()
    losses = ipo_loss(chosen, rejected, tau=0.1)
    reference = (chosen - rejected - 5.0) ** 2
    torch.testing.assert_close(losses, reference)
    torch.testing.assert_close(torch.autograd.grad(losses.sum(), chosen)[0], 2 * (chosen - rejected - 5.0))


def lm_batch(pairs: int = 3, length: int = 7, vocab: int = 11, prompt: int = 2) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Random policy/reference logits and labels for `pairs` stacked chosen/rejected rows with ragged responses."""
    rows = 2 * pairs
    input_ids = torch.randint(vocab, (rows, length))
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    for row in range(rows):  # ragged: padding at the end of some rows
        labels[row, length - row % 3 :] = -100
    policy = torch.randn(rows, length, vocab, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(rows, length, vocab, dtype=torch.float64)
    return policy, reference, {"input_ids": input_ids, "labels": labels, "index": torch.arange(pairs)}


def plain_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over scored positions of log softmax(logits[t])[labels[t+1]], one Python loop."""
    total = torch.zeros(len(labels), dtype=torch.float64)
    for row in range(len(labels)):
        for t in range(labels.shape[1] - 1):
            if labels[row, t + 1] != -100:
                total[row] = total[row] + torch.log(torch.exp(logits[row, t]) / torch.exp(logits[row, t]).sum())[labels[row, t + 1]]
    return total


def test_sequence_logps_score_response_tokens_only_and_ignore_padding() -> None:
    policy, _, batch = lm_batch()
    logps, mask = token_logps(policy, batch["labels"])
    torch.testing.assert_close(logps.sum(-1), plain_sequence_logps(policy, batch["labels"]))
    assert mask.sum() == (batch["labels"][:, 1:] != -100).sum()
    padded = torch.cat([batch["labels"], torch.full((len(batch["labels"]), 3), -100)], dim=1)
    longer = torch.cat([policy, torch.randn(len(policy), 3, policy.shape[-1], dtype=torch.float64)], dim=1)
    torch.testing.assert_close(token_logps(longer, padded)[0].sum(-1), logps.sum(-1))


def test_dpo_objective_on_logits_matches_the_plain_computation() -> None:
    policy, reference, batch = lm_batch()
    ref_logps = plain_sequence_logps(reference, batch["labels"])
    objective = DPO(beta=BETA)
    loss, logs = objective({"logits": policy, "ref_logps": ref_logps}, batch)
    rho = plain_sequence_logps(policy, batch["labels"]) - ref_logps
    rho_w, rho_l = rho[:3], rho[3:]
    expected = -log_sigmoid(BETA * (rho_w - rho_l)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["rewards/chosen"], (BETA * rho_w).mean())
    torch.testing.assert_close(logs["rewards/accuracy"], (rho_w > rho_l).float().mean())
    (grad,) = torch.autograd.grad(loss, policy)
    (expected_grad,) = torch.autograd.grad(expected, policy)
    torch.testing.assert_close(grad, expected_grad)


def test_ipo_objective_length_normalisation_is_trls_form() -> None:
    policy, reference, batch = lm_batch()
    ref_logps = plain_sequence_logps(reference, batch["labels"])
    rho = plain_sequence_logps(policy, batch["labels"]) - ref_logps
    lengths = (batch["labels"][:, 1:] != -100).sum(-1)
    for normalize, scores in ((False, rho), (True, rho / lengths)):
        loss, _ = IPO(tau=0.1, length_normalize=normalize)({"logits": policy, "ref_logps": ref_logps}, batch)
        torch.testing.assert_close(loss, ((scores[:3] - scores[3:] - 5.0) ** 2).mean())


def brute_force_sequential_kl(policy: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_t m_t Σ_v p_ref(v) (log p_ref(v) − log p(v)), loops over rows, positions and the vocabulary."""
    total = torch.zeros(len(labels), dtype=torch.float64)
    for row in range(len(labels)):
        for t in range(labels.shape[1] - 1):
            if labels[row, t + 1] == -100:
                continue
            p_ref = torch.exp(reference[row, t]) / torch.exp(reference[row, t]).sum()
            p = torch.exp(policy[row, t]) / torch.exp(policy[row, t]).sum()
            for v in range(len(p)):
                total[row] = total[row] + p_ref[v] * (torch.log(p_ref[v]) - torch.log(p[v]))
    return total


def test_tdpo_sequential_kl_against_a_brute_force_sum() -> None:
    policy, reference, batch = lm_batch()
    torch.testing.assert_close(sequential_kl(policy, reference, batch["labels"]).double(),
                               brute_force_sequential_kl(policy, reference, batch["labels"]), rtol=1e-6, atol=1e-8)


def test_tdpo_losses_and_stop_gradient() -> None:
    chosen, rejected = ratios(8)
    kl_w, kl_l = (torch.rand(8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    tdpo1, _ = tdpo_loss(chosen, rejected, kl_w, kl_l, beta=BETA, variant="tdpo1")
    torch.testing.assert_close(tdpo1, -log_sigmoid(BETA * (chosen - rejected - (kl_l - kl_w))))
    tdpo2, _ = tdpo_loss(chosen, rejected, kl_w, kl_l, beta=BETA, alpha=0.5, variant="tdpo2")
    torch.testing.assert_close(tdpo2, -log_sigmoid(BETA * (chosen - rejected - 0.5 * (kl_l - kl_w))))
    grad_w, grad_l = torch.autograd.grad(tdpo2.sum(), (kl_w, kl_l), allow_unused=True)
    assert grad_w is None and torch.all(grad_l != 0)  # no gradient reaches the chosen SeqKL


def test_tdpo_objective_on_logits() -> None:
    policy, reference, batch = lm_batch()
    loss, logs = TDPO(beta=BETA, alpha=0.5, variant="tdpo1")({"logits": policy, "ref_logits": reference}, batch)
    rho = plain_sequence_logps(policy, batch["labels"]) - plain_sequence_logps(reference, batch["labels"])
    kl = brute_force_sequential_kl(policy, reference, batch["labels"])
    expected = -log_sigmoid(BETA * (rho[:3] - rho[3:] - (kl[3:] - kl[:3]))).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logs["rewards/chosen"].double(), (BETA * (rho[:3] + kl[:3])).mean(), rtol=1e-6, atol=1e-9)


def test_sft_is_the_token_mean_nll_of_the_chosen_half() -> None:
    policy, _, batch = lm_batch()
    loss, _ = SFT()({"logits": policy}, batch)
    chosen_labels = batch["labels"][:3]
    expected = -plain_sequence_logps(policy[:3], chosen_labels).sum() / (chosen_labels[:, 1:] != -100).sum()
    torch.testing.assert_close(loss, expected)
    assert math.isfinite(loss.item())
