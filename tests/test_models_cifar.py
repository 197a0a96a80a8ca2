"""The CIFAR model zoo and torchvision models: sizes against the published ones, the forward
interface every kdlab vision model has, and the registry."""

import pytest
import torch
import torchvision

from kdlab.models import MODELS, TorchvisionClassifier, create, register

CIFAR_NAMES = sorted(name for name in MODELS if not name.startswith("tv_"))

# Millions of parameters at 100 classes, as the KD papers tabulate them (RepDistiller/CRD, mdistiller).
PUBLISHED_SIZES = {
    "resnet20": 0.28, "resnet56": 0.86, "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26,
    "wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg13": 9.46, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "mobilenetv2": 0.81, "resnet50": 23.71,
}


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_SIZES.items()))
def test_parameter_counts_match_the_published_ones(name: str, millions: float) -> None:
    model = create(name, num_classes=100)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


def test_the_zoo_has_every_family_of_the_kd_tables() -> None:
    expected = {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)} | {"resnet8x4", "resnet32x4", "resnet50",
                "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2"}
    assert expected <= set(CIFAR_NAMES)


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_models_give_logits_and_features(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, features = model(x, return_features=True)
    assert logits.shape == (2, 7) and model.num_classes == 7
    assert torch.equal(logits, model(x))
    assert features["penultimate"].shape == (2, model.feature_dim)
    torch.testing.assert_close(model.head(features["penultimate"]), logits)  # the head reads the penultimate feature
    stages = features["stages"]
    assert len(stages) >= 3 and all(s.dim() == 4 and s.shape[0] == 2 for s in stages)
    assert all(a.shape[-1] >= b.shape[-1] for a, b in zip(stages, stages[1:]))  # shallow to deep


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_cifar_models_take_other_channel_counts_and_sizes(name: str) -> None:
    model = create(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_torchvision_models_by_name_with_features() -> None:
    model = create("tv_resnet18", num_classes=10).eval()
    logits, features = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10) and model.feature_dim == 512
    assert features["penultimate"].shape == (2, 512)
    assert [s.shape[1] for s in features["stages"]] == [64, 128, 256, 512]
    torch.testing.assert_close(model.net.fc(features["penultimate"]), logits)
    mobile = create("tv_mobilenet_v2", num_classes=10).eval()
    logits, features = mobile(torch.randn(2, 3, 32, 32), return_features=True)
    assert features["penultimate"].shape == (2, 1280) and features["stages"] == []
    torch.testing.assert_close(mobile.net.classifier[-1](features["penultimate"]), logits)


def test_pretrained_torchvision_weights_get_a_new_head_for_other_class_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `weights`, torchvision builds the 1000-class model (here without the download); kdlab
    keeps its body and puts a fresh `num_classes`-way head on it."""
    pretrained = torchvision.models.resnet18()
    calls = []

    def get_model(name: str, **kwargs):
        calls.append((name, kwargs))
        return pretrained

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    model = TorchvisionClassifier("resnet18", num_classes=10, weights="DEFAULT").eval()
    assert calls == [("resnet18", {"weights": "DEFAULT"})]
    assert model.net.fc.out_features == 10 and model.net.layer1 is pretrained.layer1
    logits, features = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10) and features["penultimate"].shape == (2, 512)


def test_unknown_names_and_double_registrations_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet32x5'.*resnet32x4"):
        create("resnet32x5", num_classes=10)
    with pytest.raises(ValueError, match="registered twice"):
        register("resnet8")(lambda num_classes: None)
    with pytest.raises(ValueError, match="depth 6n\\+2"):
        create("resnet8", num_classes=10, depth=9)
