"""kdlab's divergences against the peer libraries' own implementations (skipped where a peer is not installed).

- TRL `GKDTrainer.generalized_jsd_loss`: the mixture is beta * teacher + (1 - beta) * student and beta = 0 / 1
  are KL(p||q) / KL(q||p), as in kdlab's `gjsd`; logits are divided by the temperature inside, no T^2.
  Its "batchmean" with `labels` is the sum over tokens whose label is not -100 / their number = kdlab's
  "mean" with `mask = labels != -100`. TRL computes in the input dtype, so the inputs here are float32.
- torchtune `ForwardKLLoss` is the cross-entropy form -sum_c p_c log q_c averaged over non-ignored tokens
  = kdlab `fkl(drop_teacher_entropy=True)` with reduction "mean".
POT's Sinkhorn is compared in tests/test_divergences_sinkhorn.py.
"""

import pytest
import torch

from kdlab.divergences import get


def lm_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    student, teacher = 3 * torch.randn(2, 5, 17, generator=generator), 3 * torch.randn(2, 5, 17, generator=generator)
    labels = torch.randint(0, 17, (2, 5), generator=generator)
    labels[0, :2] = labels[1, 4] = -100
    return student.requires_grad_(), teacher, labels


def gkd_loss():
    gkd = pytest.importorskip("trl.experimental.gkd", reason="TRL with experimental GKD not installed")
    return gkd.GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_gjsd_matches_trl_generalized_jsd_loss(beta):
    trl_loss = gkd_loss()
    student, teacher, labels = lm_batch()
    expected = trl_loss(student, teacher, labels=labels, beta=beta, temperature=2.0)
    value = get("gjsd", beta=beta)(student, teacher, mask=labels != -100, temperature=2.0)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(value, student)[0], torch.autograd.grad(expected, student)[0], rtol=1e-4, atol=1e-7)


def test_fkl_cross_entropy_form_matches_torchtune_forward_kl():
    loss = pytest.importorskip("torchtune.modules.loss", reason="torchtune not importable with this torch")
    student, teacher, labels = lm_batch(seed=1)
    expected = loss.ForwardKLLoss()(student.view(-1, 17), teacher.view(-1, 17), labels.view(-1))
    value = get("fkl", drop_teacher_entropy=True)(student, teacher, mask=labels != -100)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
