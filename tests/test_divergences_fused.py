"""The fused engine (`kdlab.divergences.fused`) against the plain formulas, in values and gradients.

The mechanism (the same per-chunk function and autograd function, run eagerly: `KDLAB_FUSED=eager`)
is checked for every divergence case of `test_divergences.CASES` x fp32/bf16 x masks x temperatures
x reductions x chunk sizes, with -inf vocabulary entries and gradients in both inputs; the compiled
path for a representative subset at a small vocabulary (compilation is shape-specialised).
"""

import math

import pytest
import torch

from kdlab.divergences import REGISTRY, chunked, fused, get
from test_divergences import CASES, case_id, is_unbounded

# bf16 gradients: the fused G is rounded to bf16 before it is scaled by the reduction's weights, the
# plain one after, so they differ by up to one bf16 rounding (2^-8 relative).
TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 1e-14}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.bfloat16: {"rtol": 1e-2, "atol": 1e-4}}


def logits(*shape, dtype=torch.float32, seed=0):
    return (3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype).requires_grad_()


def with_masked_vocabulary(student, teacher):
    """Entry 0 -inf on both sides, entry 3 on the teacher's side only (in the first row)."""
    student, teacher = student.detach().clone(), teacher.detach().clone()
    student[..., 0] = teacher[..., 0] = -math.inf
    teacher[0, ..., 3] = -math.inf
    return student.requires_grad_(), teacher.requires_grad_()


def took_fused(value):
    """Whether the autograd graph of `value` passes through the fused engine."""
    stack, seen = [value.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_FusedBackward":
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def weighted_grads(value, inputs):
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).view(value.shape)
    return torch.autograd.grad((value * weights).sum(), inputs, materialize_grads=True)


def assert_fused_equals_plain(divergence, student, teacher, dtype, tolerance=None, **call):
    """The call through `Divergence.evaluate` (fused) and through the plain formula `divergence.fn`."""
    tolerance = tolerance or TOLERANCE[dtype]
    got = divergence.evaluate(student, teacher, **call)
    call.pop("chunk_size", None)
    expected = divergence.fn(student, teacher, **call, **divergence.params)
    assert took_fused(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, equal_nan=True, **tolerance)
    for grad, expected_grad in zip(weighted_grads(got, (student, teacher)), weighted_grads(expected, (student, teacher))):
        assert grad.dtype == dtype
        torch.testing.assert_close(grad, expected_grad, equal_nan=True, **tolerance)


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setenv("KDLAB_FUSED", "eager")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_mechanism_equals_the_plain_formula(case, dtype, eager):
    name, params = case
    divergence = get(name, **params)
    student, teacher = with_masked_vocabulary(logits(3, 5, 17, dtype=dtype, seed=1), logits(3, 5, 17, dtype=dtype, seed=2))
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) < 0.6
    # a negative power makes values and gradients large (infinite where a probability vanishes): relative error only
    tolerance = {"rtol": 1e-3, "atol": 0.0} if is_unbounded(case) and dtype == torch.float32 else None
    for temperature, reduction, chunk_size, row_mask in ((1.0, "mean", None, mask), (2.0, "sum", 4, None), (0.5, "none", 1, mask)):
        assert_fused_equals_plain(
            divergence, student, teacher, dtype, tolerance, mask=row_mask, temperature=temperature, reduction=reduction, chunk_size=chunk_size
        )


@pytest.mark.parametrize(
    ("name", "dtype"), [("fkl", torch.float32), ("js", torch.bfloat16), ("tvd", torch.float32), ("ab", torch.bfloat16), ("chi2", torch.float32)]
)
def test_compiled_path_equals_the_plain_formula(name, dtype, monkeypatch):
    divergence = get(name)  # before the threshold drops: get's 1 x 2 probe compiles nothing
    monkeypatch.setenv("KDLAB_FUSED", "1")
    monkeypatch.setenv("KDLAB_FUSED_MIN_NUMEL", "0")
    student, teacher = with_masked_vocabulary(logits(24, 64, dtype=dtype, seed=4), logits(24, 64, dtype=dtype, seed=5))
    mask = torch.rand(24, generator=torch.Generator().manual_seed(6)) < 0.7
    assert_fused_equals_plain(divergence, student, teacher, dtype, mask=mask, temperature=2.0, reduction="mean")
    assert any(compiled for (key, _, compiled) in fused._kernels if key[0] == name)


def test_gradients_only_for_the_inputs_that_need_them_and_none_without_grad(eager):
    divergence = get("gjsd", beta=0.3)
    student, teacher = logits(6, 40, dtype=torch.bfloat16, seed=7), logits(6, 40, dtype=torch.bfloat16, seed=8).detach()
    value = divergence(student, teacher)
    assert value.dtype == torch.float32 and took_fused(value)
    torch.testing.assert_close(value, divergence.fn(student, teacher, beta=0.3), rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(value, student)
    assert grad.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(divergence(student, teacher, reduction="none"), divergence.fn(student, teacher, reduction="none", beta=0.3))


def test_float64_takes_the_fused_mechanism_in_eager_mode(eager):
    student, teacher = logits(4, 7, 11, dtype=torch.float64, seed=9), logits(4, 7, 11, dtype=torch.float64, seed=10)
    assert_fused_equals_plain(get("hellinger"), student, teacher, torch.float64, reduction="sum")


def test_default_mode_keeps_small_and_float64_logits_on_the_plain_path(monkeypatch):
    monkeypatch.delenv("KDLAB_FUSED", raising=False)
    monkeypatch.setattr(fused, "_kernels", {})
    small = logits(8, 10, seed=11), logits(8, 10, seed=12)
    large_float64 = logits(1, 2**20, dtype=torch.float64, seed=13), logits(1, 2**20, dtype=torch.float64, seed=14)
    for student, teacher in (small, large_float64):
        assert not took_fused(get("fkl")(student, teacher))
    assert fused._kernels == {}
    assert fused.min_numel() == 2**20
    assert took_fused(chunked(get("fkl"), 4)(*small))  # an explicit chunk size takes the engine, eagerly at this size
    assert not any(compiled for (_, _, compiled) in fused._kernels)
    monkeypatch.setenv("KDLAB_FUSED", "0")
    assert not took_fused(chunked(get("fkl"), 4)(*small))


def test_a_compilation_failure_falls_back_to_the_plain_path_with_one_warning(monkeypatch):
    monkeypatch.setenv("KDLAB_FUSED", "1")
    monkeypatch.setenv("KDLAB_FUSED_MIN_NUMEL", "0")
    for attribute, value in (("_kernels", {}), ("_failed", set()), ("_warned", False)):
        monkeypatch.setattr(fused, attribute, value)

    def no_backend(fn, **options):
        def broken(*args):
            raise RuntimeError("no compiler for this backend\nsecond line")

        return broken

    monkeypatch.setattr(torch, "compile", no_backend)
    student, teacher = logits(4, 9, seed=15), logits(4, 9, seed=16)
    with pytest.warns(RuntimeWarning, match=r"compilation failed \(RuntimeError: no compiler for this backend\); using the plain") as caught:
        first = get("rkl")(student, teacher)
        second = get("tvd")(student, teacher)
    assert len(caught) == 1
    assert not took_fused(first) and not took_fused(second)
    torch.testing.assert_close(first, REGISTRY["rkl"](student, teacher))


def test_backward_runs_once_and_only_the_gradient_is_kept(eager):
    student, teacher = logits(256, 500, seed=17), logits(256, 500, seed=18).detach()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.untyped_storage().nbytes()) or x, lambda x: x):
        value = get("js")(student, teacher)
    assert sum(saved) <= 256 * 500 * 4 + 256 * 8  # the student's gradient buffer, and the per-position values
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once.*KDLAB_FUSED=0"):
        value.backward()


def test_bad_settings_and_chunk_sizes_are_refused_in_one_line(monkeypatch):
    student, teacher = logits(2, 5, seed=19), logits(2, 5, seed=20)
    monkeypatch.setenv("KDLAB_FUSED", "yes")
    with pytest.raises(ValueError, match="KDLAB_FUSED must be one of 0, 1, eager"):
        get("fkl")(student, teacher)
    monkeypatch.setenv("KDLAB_FUSED", "1")
    monkeypatch.setenv("KDLAB_FUSED_MIN_NUMEL", "1e6")
    with pytest.raises(ValueError, match="KDLAB_FUSED_MIN_NUMEL must be a non-negative integer"):
        get("fkl")(student, teacher)
    monkeypatch.delenv("KDLAB_FUSED_MIN_NUMEL")
    with pytest.raises(ValueError, match="sinkhorn is batch-level"):
        chunked(get("sinkhorn"), 8)
    for size in (0, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
            chunked(get("fkl"), size)


def test_inside_activation_checkpointing_equals_the_plain_formula(eager):
    """Checkpointing's saved-tensor hooks are lifted inside the kernels and still see the gradient buffer."""
    from torch.utils.checkpoint import checkpoint

    divergence = get("skl")
    student, teacher = logits(6, 30, seed=21), logits(6, 30, seed=22).detach()
    got = checkpoint(lambda s: divergence(s, teacher, reduction="sum"), student, use_reentrant=False)
    expected = divergence.fn(student, teacher, reduction="sum", alpha=0.1)
    assert took_fused(got)
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(torch.autograd.grad(got, student)[0], torch.autograd.grad(expected, student)[0], **TOLERANCE[torch.float32])
