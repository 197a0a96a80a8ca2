"""SparsePO and MaPO: all masks ≡ 1 and λ = 0 is exactly TDPO1; the loss, the learned mask network and
MaPO's activation mask against the official code's formulas (huawei-noah/HEBO SparsePO), values and gradients."""

import types

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.objectives.base import PrepareContext
from kdlab.objectives.sparsepo import SparsePO, activation_mask
from kdlab.objectives.tdpo import TDPO

B, L, V, H, LAYERS = 3, 6, 5, 4, 2


def batch(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(V, (2 * B, L), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    labels[0, -1] = labels[4, -2:] = -100  # padding
    outputs = {"logits": torch.randn(2 * B, L, V, generator=g, dtype=torch.float64, requires_grad=True),
               "ref_logits": torch.randn(2 * B, L, V, generator=g, dtype=torch.float64),
               "ref_hidden": tuple(torch.randn(2 * B, L, H, generator=g, dtype=torch.float64) for _ in range(LAYERS + 1))}
    return outputs, {"labels": labels, "input_ids": ids}


def sparsepo(**overrides) -> SparsePO:
    arguments = dict(beta=0.1, mask="learned", independent=False, l1_reward=0.0, l1_kl=0.0, dropout=0.0) | overrides
    return SparsePO(**arguments)


def test_masks_of_ones_and_no_l1_are_exactly_tdpo1() -> None:
    outputs, data = batch()
    ours = sparsepo(mask="ones").pairs(outputs, data)
    tdpo = TDPO(beta=0.1, alpha=0.5, variant="tdpo1").pairs(outputs, data)
    assert (ours.losses - tdpo.losses).abs().max() < 1e-14 and (ours.probability - tdpo.probability).abs().max() < 1e-14
    grads = torch.autograd.grad(ours.losses.sum(), outputs["logits"])[0]
    truth = torch.autograd.grad(tdpo.losses.sum(), outputs["logits"])[0]
    assert (grads - truth).abs().max() < 1e-14  # float64 rounding: the same terms summed in another order


def official_simple_mask_all(hidden, norm, per_layer, mixer):
    """`SimpleMaskAllLayers.forward` (mask_models.py) with ReLU activations and dropout off."""
    scores = [F.relu(layer(norm(h))) for layer, h in zip(per_layer, hidden)]
    return F.relu(mixer(torch.concat(scores, dim=-1))).squeeze(-1)


def official_loss(logits, ref_logits, labels, rw_mask, kl_mask, beta, l1_u, l1_d, common):
    """`get_batch_loss_metrics` of sparse_trainer.py (mask_on_reward = mask_on_kl = True)."""
    if common:
        l1_u, l1_d = l1_u / 2.0, l1_d / 2.0
    labels = labels[:, 1:].clone()
    loss_mask = labels != -100
    labels[labels == -100] = 0
    logits, ref_logits = logits[:, :-1], ref_logits[:, :-1]
    pol_vocab, ref_vocab = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    pol_tok = torch.gather(pol_vocab, 2, labels.unsqueeze(2)).squeeze(2)
    ref_tok = torch.gather(ref_vocab, 2, labels.unsqueeze(2)).squeeze(2)
    reward = ((rw_mask * (pol_tok - ref_tok)) * loss_mask).sum(-1)
    token_kl = (ref_logits.softmax(-1) * (pol_vocab - ref_vocab)).sum(-1)
    kl = ((kl_mask * token_kl) * loss_mask).sum(-1)
    u, d = reward[:B] - reward[B:], kl[:B] - kl[B:]
    losses = -F.logsigmoid(beta * (u - d))
    norm_u = torch.linalg.vector_norm(rw_mask * loss_mask, ord=1, dim=-1)
    norm_d = torch.linalg.vector_norm(kl_mask * loss_mask, ord=1, dim=-1)
    return losses + l1_u * (norm_u[:B] + norm_u[B:]) + l1_d * (norm_d[:B] + norm_d[B:])


@pytest.mark.parametrize("independent", [False, True])
def test_the_learned_masks_and_loss_are_the_official_codes(independent: bool) -> None:
    outputs, data = batch(1)
    objective = sparsepo(independent=independent, l1_reward=0.01, l1_kl=0.02)
    config = types.SimpleNamespace(hidden_size=H, num_hidden_layers=LAYERS, layer_norm_epsilon=1e-5)
    objective.prepare(PrepareContext(model=types.SimpleNamespace(config=config), teacher=None, num_classes=None, device=torch.device("cpu"),
                                     train_loader=lambda: None, trainable_parameters=lambda: []))
    objective.double()
    torch.manual_seed(0)
    for parameter in objective.parameters():  # away from the initialisation: ReLU keeps some tokens and zeroes others
        parameter.data = torch.randn_like(parameter)
    for network in objective.networks:
        network.mixer.weight.data.abs_()
    ours = objective.pairs(outputs, data).losses
    hidden = [h[:, :-1] for h in outputs["ref_hidden"]][1:]
    nets = objective.networks
    rw = official_simple_mask_all(hidden, nets[0].norm, nets[0].per_layer, nets[0].mixer)
    kl = official_simple_mask_all(hidden, nets[1].norm, nets[1].per_layer, nets[1].mixer) if independent else rw
    theirs = official_loss(outputs["logits"], outputs["ref_logits"], data["labels"], rw, kl, 0.1, 0.01, 0.02, common=not independent)
    assert (rw == 0).any() and (rw > 0).any()  # sparse: ReLU zeroes some tokens
    assert torch.allclose(ours, theirs, rtol=1e-10)
    params = [outputs["logits"], *objective.parameters()]
    for a, b in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)


def official_zn_rescale(activation, mask):
    """MaPO's `apply_activation_mapping("zn_rescale")` in float64 (the official casts its statistics to float16)."""
    reduced = activation.mean(-1)
    mean = ((reduced * mask).sum(-1) / mask.sum(-1)).view(-1, 1)
    std = torch.stack([reduced[i, mask[i]].std() for i in range(len(reduced))]).view(-1, 1) + 1e-12
    reduced = (reduced - mean) / std
    low = torch.stack([reduced[i, mask[i]].min() for i in range(len(reduced))]).view(-1, 1)
    high = torch.stack([reduced[i, mask[i]].max() for i in range(len(reduced))]).view(-1, 1)
    return (reduced - low) / (high - low) * mask


def test_mapos_activation_mask_is_the_official_zn_rescale() -> None:
    outputs, data = batch(2)
    mask = data["labels"][:, 1:] != -100
    hidden = [h[:, :-1] for h in outputs["ref_hidden"]]
    expected = torch.stack([official_zn_rescale(h, mask) for h in hidden]).mean(0)
    assert torch.allclose(activation_mask(hidden, mask), expected, rtol=1e-9, atol=1e-12)
    assert sparsepo(mask="mapo").pairs(outputs, data).losses.isfinite().all()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="objective.mask"):
        sparsepo(mask="random")
    with pytest.raises(ConfigError, match="apply to mask=learned"):
        sparsepo(mask="ones", l1_reward=0.1)
