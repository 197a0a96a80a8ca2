"""Registry, `get`, `describe`, the Hydra configs of conf/divergence, and ValueErrors on bad input."""

import inspect
import math
from pathlib import Path

import pytest
import torch

from kdlab.divergences import REGISTRY, describe, get, parameters

CONF = Path(__file__).resolve().parents[1] / "kdlab" / "conf" / "divergence"


def test_every_divergence_takes_the_common_call_and_documents_its_formula_first():
    for name, fn in REGISTRY.items():
        signature = inspect.signature(fn)
        assert list(signature.parameters)[:5] == ["student_logits", "teacher_logits", "mask", "temperature", "reduction"], name
        assert "=" in inspect.getdoc(fn).splitlines()[0], name
    rows = {row[0]: row for row in describe()}
    assert set(rows) == set(REGISTRY)
    assert rows["skl"][1] == "alpha=0.1" and rows["kl"][2] == rows["fkl"][2].strip() and rows["rkl"][1] == ""


def test_get_binds_parameters():
    s, t = torch.randn(3, 6), torch.randn(3, 6)
    torch.testing.assert_close(get("skl", alpha=0.3)(s, t), REGISTRY["skl"](s, t, alpha=0.3))
    torch.testing.assert_close(get("kl")(s, t), get("fkl")(s, t))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "valid names: fkl, kl, rkl"),
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


def test_every_registry_name_has_a_config_with_the_published_defaults():
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    assert {path.stem for path in CONF.glob("*.yaml")} == set(REGISTRY)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    for path in sorted(CONF.glob("*.yaml")):
        assert path.read_text().startswith("# "), path
        cfg = omegaconf.OmegaConf.load(path)
        assert cfg._target_ == "kdlab.divergences.get" and cfg.name == path.stem
        assert {k: v for k, v in cfg.items() if k not in ("_target_", "name")} == parameters(path.stem), path
        torch.testing.assert_close(hydra_utils.instantiate(cfg)(s, t), get(path.stem)(s, t))
