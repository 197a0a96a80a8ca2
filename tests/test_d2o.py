"""D2O: the loss against a float64 reference written here (values and gradients), the objective on a
hand-made rollout batch, and the prompts of right-padded preference rows."""

import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.objectives.d2o import D2O, d2o_loss
from kdlab.objectives.on_policy import prompts_of


def reference_d2o(samples: torch.Tensor, negatives: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """−log σ((β/K) Σ_i ρ_i − α ρ_l) per prompt, with log σ(z) = −log(1 + e^{−z}) (Duan et al. 2024)."""
    k = samples.shape[1]
    z = beta / k * samples.sum(-1) - alpha * negatives
    return torch.log1p(torch.exp(-z))


def test_the_loss_and_its_gradient_match_the_reference() -> None:
    torch.manual_seed(0)
    samples = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    negatives = torch.randn(5, dtype=torch.float64, requires_grad=True)
    losses, logits = d2o_loss(samples, negatives, 0.1, 0.3)
    expected = reference_d2o(samples, negatives, 0.1, 0.3)
    assert torch.allclose(losses, expected, rtol=1e-12)
    grads = torch.autograd.grad(losses.sum(), [samples, negatives])
    truth = torch.autograd.grad(expected.sum(), [samples, negatives])
    for ours, reference in zip(grads, truth):
        assert torch.allclose(ours, reference, rtol=1e-12)
    # the negative's log-ratio is pushed down, every self-generated sample's up, each by β/K
    sigma = torch.sigmoid(-logits.detach())
    assert torch.allclose(grads[1], 0.3 * sigma) and torch.allclose(grads[0], -(0.1 / 11) * sigma.unsqueeze(-1).expand(5, 11))


def test_the_objective_reads_samples_and_negatives_from_the_rollouts() -> None:
    """2 prompts, K = 3 samples each (kind 0, consecutive), then the 2 negatives (kind 1)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.zeros(8, 1, dtype=torch.long), torch.randint(4, (8, 2), generator=g)], dim=1)
    labels = ids.clone()
    labels[:, 0] = -100
    logits = torch.randn(8, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "ref_logps": torch.randn(8, 2, generator=g, dtype=torch.float64) - 1,
             "kind": torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]), "group": torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])}
    loss, logs = D2O(beta=0.1, alpha=0.2)({"logits": logits}, batch)
    log_pi = logits.log_softmax(-1)[:, :2].gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)
    ratio = log_pi - batch["ref_logps"].sum(-1)
    expected = reference_d2o(ratio[:6].view(2, 3), ratio[6:], 0.1, 0.2).mean()
    assert torch.allclose(loss, expected, rtol=1e-12)
    assert 0.0 <= logs["accuracy"] <= 1.0


def test_the_prompts_of_right_padded_rows_are_left_padded() -> None:
    ids = torch.tensor([[7, 8, 9, 1, 0], [5, 6, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 9, 1, -100], [-100, 6, 2, -100, -100]])
    prompts = prompts_of(ids, mask, labels)
    assert prompts["prompt_ids"].tolist() == [[7, 8], [0, 5]] and prompts["prompt_mask"].tolist() == [[1, 1], [0, 1]]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="D2O needs"):
        D2O(beta=0.0, alpha=0.1)
