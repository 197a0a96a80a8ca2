"""The teacher-output cache of vision distillation (`teacher.outputs.views`, kdlab.teacher_outputs): fixed views
drawn as a function of (seed, view, image), replayed exactly for the student with the teacher's own logits on
them, stored once and reused, resumed exactly; top-k soft labels against a float64 reference; bad settings refused."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import cifar_root  # noqa: F401  (fixture)
from cli_process import run_cli
from conftest import KDLAB, kdlab
from image_files import labelled_arrays, write_arrays
from hydra.utils import get_class
from omegaconf import OmegaConf
from test_configs import compose_train
from torch import nn
from torchvision.transforms.v2 import functional as F

from kdlab.data import CIFARDataModule, DigitsDataModule
from kdlab.data.soft_labels import SoftLabels, compress
from kdlab.data.views import view_parameters
from kdlab.errors import ConfigError
from kdlab.teacher_outputs import replay_teacher_outputs
from kdlab.teachers import CachedTeacher, ignored_options
from kdlab.validate import validate

KILLPOINT = Path(__file__).parent / "killpoint"
MASK = 2**64 - 1


def splitmix64(x: int) -> int:
    """SplitMix64's finaliser on Python integers: the reference for `view_parameters`' numpy version."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def test_views_are_a_function_of_seed_view_and_image_with_the_augmentations_distribution() -> None:
    padding, views = 4, 3
    parameters = view_parameters(7, views, 5000, padding, flip=True)
    assert parameters.shape == (views, 5000, 3) and parameters.dtype == torch.int64
    for k, i in [(0, 0), (1, 17), (2, 4999)]:
        h = splitmix64(splitmix64(splitmix64(7) ^ k) ^ i)
        span = 2 * padding + 1
        assert parameters[k, i].tolist() == [(h >> 32) % span, ((h >> 32) // span) % span, h & 1]
    assert torch.equal(view_parameters(7, views, 40, padding, flip=True), parameters[:, :40])  # not a function of N
    assert not torch.equal(view_parameters(8, views, 40, padding, flip=True), parameters[:, :40])
    for column in (0, 1):  # uniform offsets on {0, ..., 8}
        counts = torch.bincount(parameters[..., column].flatten(), minlength=2 * padding + 1).double() / parameters[..., 0].numel()
        assert counts.shape == (9,) and (counts - 1 / 9).abs().max() < 0.01
    assert abs(parameters[..., 2].double().mean().item() - 0.5) < 0.01
    assert not view_parameters(7, views, 50, padding, flip=False)[..., 2].any()


@pytest.mark.parametrize("top_k", [None, 10, 3, 1])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_stored_soft_labels_read_back_as_the_kept_classes_plus_a_uniform_tail(top_k: int | None, temperature: float) -> None:
    """float64 reference: p = softmax(z); the k largest p kept, each other class gets (1 - sum kept) / (C - k); a
    temperature divides the log of that distribution. top_k None or >= C: the logits themselves."""
    z = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(0)) * 3
    stored = [compress(z[view], top_k) for view in (0, 1)]
    labels = SoftLabels({name: torch.stack([views[name] for views in stored]) for name in stored[0]}, 10)
    index = torch.tensor([4, 0, 2])
    for view in (0, 1):
        p = z[view, index].double().softmax(-1)
        if top_k is None or top_k >= 10:
            expected = p.log()
        else:
            kept = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.argsort(-1, descending=True)[:, :top_k], True)
            tail = (1 - (p * kept).sum(-1, keepdim=True)) / (10 - top_k)
            expected = torch.where(kept, p, tail.expand_as(p)).log()
        read = labels.logits(view, index)
        assert read.dtype == torch.float32 and read.shape == (3, 10)
        torch.testing.assert_close((read.double() / temperature).softmax(-1), (expected / temperature).softmax(-1), atol=1e-6, rtol=1e-5)


class Asymmetric(nn.Module):
    """A teacher whose logits change with every pixel's position (a crop or a flip changes them)."""

    def __init__(self, channels: int, size: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels * size * size, classes)
        self.norm = nn.BatchNorm1d(classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(inputs.flatten(1)))


def settings(tmp_path: Path, views: int, top_k: int | None = None, num_classes: int = 10):
    return OmegaConf.create({"teacher": {"outputs": {"views": views, "top_k": top_k}}, "dataset": {"num_classes": num_classes},
                             "seed": 3, "paths": {"teacher_dir": str(tmp_path / "teachers")}})


def cached(model: nn.Module, tmp_path: Path) -> CachedTeacher:
    return CachedTeacher(model.eval(), "cache", tmp_path / "teachers" / "t0" / "teacher.safetensors", "t0")


def test_the_student_gets_the_crop_and_flip_the_teacher_saw_and_its_logits_on_them(cifar_root: Path, tmp_path: Path) -> None:
    datamodule = CIFARDataModule("cifar10", root=str(cifar_root), batch_size=32, val_size=20, download=False, num_workers=0)
    teacher = cached(Asymmetric(3, 32, 10), tmp_path)
    record = replay_teacher_outputs(settings(tmp_path, views=3), datamodule, teacher, torch.device("cpu"))
    assert record["source"] == "built" and record["views"] == 3 and record["num_images"] == 180 and record["padding"] == 4
    images, _ = datamodule.splits["train"]
    parameters = view_parameters(3, 3, len(images), 4, flip=True)
    loader = datamodule.train_dataloader()
    seen = {}
    for epoch in (0, 1, 3):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(b["index"]) for b in batches) == 180
        for batch in batches:
            for row, i in enumerate(batch["index"].tolist() if epoch == 1 else []):
                top, left, flipped = parameters[epoch % 3, i].tolist()
                reference = F.crop(F.pad(images[i], [4], fill=0), top, left, 32, 32)  # torchvision's RandomCrop at that offset
                reference = F.horizontal_flip(reference) if flipped else reference
                reference = F.normalize(F.to_dtype(reference, torch.float32, scale=True), datamodule.variant.mean, datamodule.variant.std)
                torch.testing.assert_close(batch["input"][row], reference)
            with torch.no_grad():
                torch.testing.assert_close(batch["teacher_logits"], teacher.model(batch["input"]), atol=1e-5, rtol=1e-5)
            seen.setdefault(epoch, {}).update(zip(batch["index"].tolist(), batch["input"]))
    assert all(torch.equal(seen[0][i], seen[3][i]) for i in range(180))  # epoch 3 replays view 0
    assert sum(not torch.equal(seen[0][i], seen[1][i]) for i in range(180)) > 150


def test_a_second_job_reuses_the_entry_without_running_the_teacher(tmp_path: Path) -> None:
    teacher = cached(Asymmetric(1, 8, 10), tmp_path)
    first = replay_teacher_outputs(settings(tmp_path, views=4, top_k=3), DigitsDataModule(), teacher, torch.device("cpu"))
    assert first["source"] == "built" and first["views"] == 1 and first["top_k"] == 3  # digits do not augment: one view

    def no_forward(*_: object) -> None:
        raise AssertionError("the teacher ran")

    teacher.model.forward = no_forward
    datamodule = DigitsDataModule()
    again = replay_teacher_outputs(settings(tmp_path, views=4, top_k=3), datamodule, teacher, torch.device("cpu"))
    assert again["source"] == "cache" and again["path"] == first["path"] and again["build_s"] == first["build_s"]
    batch = next(iter(datamodule.train_dataloader()))
    torch.testing.assert_close(batch["input"], datamodule.splits["train"].inputs[batch["index"]], atol=0, rtol=0)
    with pytest.raises(AssertionError, match="the teacher ran"):  # other settings: another entry
        replay_teacher_outputs(settings(tmp_path, views=4, top_k=None), DigitsDataModule(), teacher, torch.device("cpu"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.outputs.views=-1"], "teacher.outputs.views=-1 must be an integer >= 0"),
    (["teacher.outputs.views=2", "teacher.outputs.top_k=0"], "teacher.outputs.top_k=0 must be an integer >= 1, or null"),
    (["+method=dhkd", "teacher.outputs.views=2"], "objective DHKD needs the teacher's features"),
    (["+method=tgeo", "teacher.outputs.views=2"], "objective TGeoKD needs the teacher's features or its pass over the training set"),
    (["dataset=glue_sst2", "model=bert_base_to_bert6", "teacher.outputs.views=2"], "dataset=glue_sst2 cannot replay cached views"),
])
def test_settings_the_cache_cannot_serve_are_one_line(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_train([*overrides, "logger=none", f"paths.output_dir={tmp_path}"], tmp_path)
    method = next((o.split("=")[1] for o in overrides if o.startswith("+method=")), "kd")
    with pytest.raises(ConfigError) as error:
        validate(cfg, method)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("method", ["scratch", "bdkd", "teacher"])
def test_regimes_without_a_frozen_teacher_accept_the_cache_options_and_ignore_them(method: str, tmp_path: Path) -> None:
    """A sweep over methods shares one command: where no frozen teacher's outputs can be replayed the option is
    valid and listed as ignored (results.json `ignored`), as every unused teacher option is."""
    cfg = compose_train([f"+method={method}", "teacher.outputs.views=2", "logger=none", f"paths.output_dir={tmp_path}"], tmp_path)
    validate(cfg, method)
    role = getattr(get_class(cfg.module._target_), "teacher_role", None)
    assert ignored_options(role, None, ["teacher.outputs.views=2"]) == ["teacher.outputs.views"]


@pytest.mark.slow
def test_a_run_on_cached_views_resumes_to_the_uninterrupted_runs_metrics(tmp_path: Path) -> None:
    """Killed when epoch 2 starts, resumed: every logged value and metric as in the run that was not stopped."""
    images, labels = labelled_arrays(n=60, shape=(8, 8, 3))
    data = write_arrays(tmp_path / "images.npz", images, labels)
    run = ["dataset=image_arrays", f"dataset.datamodule.path={data}", "model=small_images", "trainer.max_epochs=3",
           "teacher.max_epochs=1", "logger=none", "dataset.batch_size=16", "teacher.outputs.views=2",
           "dataset.datamodule.augment={random_crop_padding: 2, horizontal_flip: true}", "~callbacks.progress_bar"]
    kdlab("train", *run, outputs=tmp_path / "reference")
    outputs = tmp_path / "outputs"
    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "KDLAB_KILL_AT": "epoch_start:2", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(KILLPOINT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    assert run_cli([*KDLAB, "train", *run], env=env, cwd=outputs.parent).returncode == -signal.SIGKILL
    kdlab("train", *run, "resume=true", outputs=outputs)
    (reference,), (resumed,) = (list((root / "runs").glob("*/*")) for root in (tmp_path / "reference", outputs))
    first, second = (json.loads((d / "results.json").read_text()) for d in (reference, resumed))
    assert second["resumed_from"] and second["metrics"] == first["metrics"]
    assert second["teacher"]["outputs"]["views"] == 2 and second["teacher"]["outputs"]["source"] == "cache"
    assert (resumed / "csv" / "metrics.csv").read_text() == (reference / "csv" / "metrics.csv").read_text()
    assert np.isfinite(first["metrics"]["test/acc"])
