"""Registry, `get`, `describe`, the Hydra `divergence` group made from the registry, and ValueErrors on bad input."""

import inspect
import math

import pytest
import torch

from kdlab.divergences import ALIASES, REGISTRY, Divergence, describe, divergence, get, parameters


def test_every_divergence_takes_the_common_call_and_documents_its_formula_first():
    for name, fn in REGISTRY.items():
        signature = inspect.signature(fn)
        assert list(signature.parameters)[:5] == ["student_logits", "teacher_logits", "mask", "temperature", "reduction"], name
        assert "=" in inspect.getdoc(fn).splitlines()[0], name
    rows = {row[0]: row for row in describe()}
    assert set(rows) == set(REGISTRY) | set(ALIASES)
    assert rows["skl"][1] == "alpha=0.1" and rows["kl"][2] == rows["fkl"][2].strip() and rows["rkl"][1] == ""
    assert rows["kl"][1] == "alias of fkl"


def test_get_binds_parameters_and_records_the_canonical_name_with_every_parameter():
    s, t = torch.randn(3, 6), torch.randn(3, 6)
    torch.testing.assert_close(get("skl", alpha=0.3)(s, t), REGISTRY["skl"](s, t, alpha=0.3))
    torch.testing.assert_close(get("kl")(s, t), get("fkl")(s, t))
    assert get("kl") == Divergence("fkl", {"drop_teacher_entropy": False})
    assert get("ab", beta=0.5).record() == {"name": "ab", "alpha": 0.2, "beta": 0.5}
    assert get("sinkhorn").batch_level and not get("js").batch_level


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'kl' is registered twice"):
        divergence("kl")(lambda student_logits, teacher_logits: None)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "valid names: fkl, rkl, .*, kl"),
        ("fkl", {"alpha": 0.1}, "unknown parameter 'alpha'.*drop_teacher_entropy"),
        ("fkl", {"temperature": 2.0}, "unknown parameter 'temperature'"),
        ("skl", {"alpha": 1.5}, "alpha must be"),
        ("srkl", {"alpha": -0.1}, "alpha must be"),
        ("gjsd", {"beta": 2.0}, "beta must be"),
        ("alpha", {"alpha": math.nan}, "alpha must be"),
        ("ab", {"beta": math.inf}, "beta must be"),
        ("fdiv", {"f": "hellinger2"}, "f must be one of"),
        ("sinkhorn", {"epsilon": 0.0}, "epsilon must be"),
        ("sinkhorn", {"n_iters": 0}, "n_iters"),
        ("sinkhorn", {"cost": "l3"}, "cost must be"),
        ("sinkhorn", {"domain": "exp"}, "domain must be"),
        ("sinkhorn", {"variant": "monge"}, "variant must be"),
    ],
)
def test_get_refuses_unknown_names_and_parameters_outside_their_domain(name, params, match):
    with pytest.raises(ValueError, match=match):
        get(name, **params)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_bad_inputs_raise_value_errors_naming_the_argument(name):
    fn = get(name)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    cases = [
        ((s, torch.randn(2, 3, 6)), {}, "same shape"),  # vocabulary mismatch
        ((s, torch.randn(2, 4, 5)), {}, "same shape"),  # positions mismatch
        ((s, t[:1]), {}, "same shape"),  # no broadcasting
        ((s.long(), t), {}, "student_logits"),
        ((s, t), {"mask": torch.ones(2, 3)}, "mask must be a bool"),
        ((s, t), {"mask": torch.ones(3, 2, dtype=torch.bool)}, r"mask must be a bool tensor of the leading shape \(2, 3\)"),
        ((s, t), {"mask": torch.ones(2, 3, 5, dtype=torch.bool)}, "mask"),
        ((s, t), {"temperature": 0.0}, "temperature must be"),
        ((s, t), {"temperature": -1.0}, "temperature must be"),
        ((s, t), {"reduction": "batchmean"}, "reduction must be one of"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            fn(*args, **kwargs)


def test_every_registry_name_is_a_typed_hydra_option_with_the_functions_defaults():
    hydra = pytest.importorskip("hydra")
    from hydra.errors import ConfigCompositionException

    from kdlab.run import build_divergence

    s, t = torch.randn(4, 6), torch.randn(4, 6)
    with hydra.initialize_config_module("kdlab.conf", version_base="1.3"):
        for name in [*REGISTRY, *ALIASES]:
            node = hydra.compose("train", overrides=[f"divergence={name}"]).divergence
            assert node.name == ALIASES.get(name, name)
            assert {k: v for k, v in node.items() if k not in ("_target_", "name")} == parameters(name), name
            torch.testing.assert_close(build_divergence(node)(s, t), get(name)(s, t))  # as kdlab.run builds it
        assert hydra.compose("train", overrides=["divergence=none"]).divergence.name is None
        assert hydra.compose("train", overrides=["divergence=ab", "divergence.beta=0.5"]).divergence.beta == 0.5
        with pytest.raises(ConfigCompositionException, match="divergence.alpha=abc"):
            hydra.compose("train", overrides=["divergence=ab", "divergence.alpha=abc"])
