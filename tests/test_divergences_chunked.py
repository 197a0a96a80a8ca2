"""`chunked` agrees with the unchunked divergence and keeps no full-size float32 intermediate for backward."""

import pytest
import torch

from kdlab.divergences import REGISTRY, chunked, get

PER_POSITION = [(name, {}) for name in REGISTRY if name != "sinkhorn"] + [("gjsd", {"beta": 0.0}), ("ab", {"alpha": 0.0, "beta": 0.0})]


def logits(*shape, dtype=torch.float32, seed=0):
    return (3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype).requires_grad_()


@pytest.mark.parametrize(("name", "params"), PER_POSITION, ids=[n + str(p or "") for n, p in PER_POSITION])
def test_chunked_equals_unchunked_in_values_and_gradients(name, params):
    fn = get(name, **params)
    student, teacher = logits(2, 5, 13, seed=1), logits(2, 5, 13, seed=2)
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) < 0.6
    for chunk_size, reduction in ((1, "mean"), (3, "sum"), (4, "none"), (100, "mean")):
        plain = fn(student, teacher, mask=mask, temperature=2.0, reduction=reduction)
        pieces = chunked(fn, chunk_size)(student, teacher, mask=mask, temperature=2.0, reduction=reduction)
        torch.testing.assert_close(pieces, plain, rtol=1e-6, atol=1e-7)
        weights = torch.linspace(0.5, 1.5, plain.numel()).view(plain.shape)
        for got, want in zip(torch.autograd.grad((pieces * weights).sum(), (student, teacher)), torch.autograd.grad((plain * weights).sum(), (student, teacher))):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_chunked_bf16_gradient_only_for_the_inputs_that_need_it():
    student, teacher = logits(6, 40, dtype=torch.bfloat16, seed=4), logits(6, 40, dtype=torch.bfloat16, seed=5).detach()
    value = chunked(get("fkl"), 4)(student, teacher)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, get("fkl")(student, teacher), rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(value, student)
    assert grad.dtype == torch.bfloat16


def saved_bytes(fn, *inputs):
    """Bytes of tensors autograd saves for backward, other than the inputs themselves."""
    seen, total = {x.untyped_storage().data_ptr() for x in inputs}, 0

    def pack(tensor):
        nonlocal total
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    return total


def test_chunked_saves_no_full_size_intermediate():
    student, teacher = logits(256, 500, seed=6), logits(256, 500, seed=7)
    full = 256 * 500 * 4
    assert saved_bytes(get("js"), student, teacher) >= 2 * full
    assert saved_bytes(chunked(get("js"), 32), student, teacher) < full / 100


def test_sinkhorn_and_bad_chunk_sizes_are_refused():
    with pytest.raises(ValueError, match="batch-level"):
        chunked(get("sinkhorn"), 8)
    with pytest.raises(ValueError, match="batch-level"):
        chunked(get("sinkhorn"), 8)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            chunked(get("fkl"), size)
