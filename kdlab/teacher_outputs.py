"""The teacher-output cache of vision distillation: a frozen teacher's soft labels computed once, for K fixed
augmented views of every training image, reused by every epoch and every job that shares the teacher.

`teacher.outputs.views=K` (0: off, the teacher runs at every step) and `teacher.outputs.top_k` (None: every
class; `kdlab.data.soft_labels` says what is kept otherwise). The entry is built once, under the lock of
`kdlab.cache` (concurrent jobs wait for one builder; files checked by SHA-256 before use): view `k` of image
`i` is the crop and flip `kdlab.data.views.view_parameters(seed, K, N, padding, flip)[k, i]`, and the teacher
(eval mode, no gradient) is run on every view of every image. Training batches then replay view `e mod K` in
epoch `e` — the student sees exactly the crop and flip the teacher saw — and carry the stored
`teacher_logits`, so `DistillModule` runs no teacher forward in training (validation runs it once per image,
on the un-augmented images, and keeps its logits for the run's later validations; test runs it). A dataset
that does not augment (digits) has one view.

The entry's key is the fingerprint of the teacher's weights (SHA-256 of its state dict: the same for a cached
or a checkpointed teacher), of the train split (`ViewSource.fingerprint`: images, labels, augmentation,
normalisation), K, top_k and the seed. Layout: `<teacher entry>/outputs/<key>/{outputs.safetensors,
meta.json, manifest.json}` next to the cached teacher's weights (`<paths.teacher_dir>/checkpoint_outputs/<key>/`
for a `teacher.ckpt_path` teacher); `outputs.safetensors` holds `views` `[K, N, 3]` and the
`kdlab.data.soft_labels.compress` tensors of the logits `[K, N, C]`.
"""

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import safetensors.torch
import torch
from omegaconf import DictConfig
from torch import nn

from kdlab.cache import load_or_build
from kdlab.data.soft_labels import SoftLabels, compress
from kdlab.data.views import TeacherViews, ViewSource, view_parameters
from kdlab.errors import ConfigError
from kdlab.fingerprint import fingerprint, weights_fingerprint
from kdlab.teachers import CachedTeacher

log = logging.getLogger(__name__)

OUTPUTS_FILE = "outputs.safetensors"
META_FILE = "meta.json"
BUILD_BATCH = 256  # images per teacher forward while building (eval mode: the logits do not depend on it)


def check_teacher_outputs(outputs: Mapping[str, Any], method: str, regime: type, objective: type, data: type, dataset: str) -> None:
    """`ConfigError` (one line, naming the key) when `teacher.outputs` (`views`, `top_k`) is out of range, or
    asks for cached views where they cannot be used: an objective that needs the teacher's features or its own
    pass over the training set (`reads_training_set`), a dataset (the preset `dataset`, of datamodule class `data`) that cannot replay views."""
    views, top_k = outputs.get("views", 0), outputs.get("top_k")
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise ConfigError(f"teacher.outputs.views={views!r} must be an integer >= 0 (0: the teacher runs at every step; "
                          "K: its soft labels are computed once for K augmented views per image)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"teacher.outputs.top_k={top_k!r} must be an integer >= 1, or null (every class is kept)")
    if views == 0:
        return
    if getattr(regime, "teacher_role", None) != "frozen":
        return  # no frozen teacher to replay: the run ignores the option and records so (kdlab.teachers.ignored_options)
    if getattr(objective, "needs_features", False) or getattr(objective, "reads_training_set", False):
        raise ConfigError(f"teacher.outputs.views={views}: +method={method}'s objective {objective.__name__} needs the teacher's "
                          "features or its pass over the training set, which the cache does not replay: set teacher.outputs.views=0")
    if not hasattr(data, "view_source"):
        raise ConfigError(f"teacher.outputs.views={views}: dataset={dataset} cannot replay cached views (digits, cifar10, cifar100, "
                          "image_folder and image_arrays can): set teacher.outputs.views=0")


def replay_teacher_outputs(cfg: DictConfig, datamodule: L.LightningDataModule, teacher: CachedTeacher, device: torch.device) -> dict | None:
    """With `teacher.outputs.views` > 0: the cache entry of `teacher`'s outputs on the views of `datamodule`'s
    train split (read, or built now on `device`), given to the datamodule (`teacher_views`: its training
    batches replay them); returns the record of what was used (None when the cache is off)."""
    views, top_k = cfg.teacher.outputs.views, cfg.teacher.outputs.top_k
    if not views:
        return None
    source = datamodule.view_source()
    if views > 1 and not source.augments:
        log.info("teacher.outputs.views=%d: %s does not augment, so every view is the image itself: caching one view",
                 views, type(datamodule).__name__)
        views = 1
    num_classes = cfg.dataset.num_classes
    top_k = None if top_k is None or top_k >= num_classes else top_k
    description = {"teacher": weights_fingerprint(teacher.model), "data": source.fingerprint, "views": views, "top_k": top_k,
                   "padding": source.padding, "flip": source.flip, "seed": cfg.seed}
    key = fingerprint(description)
    root = teacher.path.parent / "outputs" if teacher.source != "checkpoint" else Path(cfg.paths.teacher_dir) / "checkpoint_outputs"

    def build(_: Path) -> dict[str, bytes]:
        log.info("Teacher outputs %s are not cached: running the teacher on %d view(s) of %d images", key, views, len(source.labels))
        started = time.perf_counter()
        parameters = view_parameters(cfg.seed, views, len(source.labels), source.padding, source.flip)
        stored = compressed_view_logits(teacher.model, source, parameters, top_k, device)
        meta = description | {"teacher_fingerprint": teacher.fingerprint, "num_images": len(source.labels),
                              "num_classes": num_classes, "build_s": round(time.perf_counter() - started, 2)}
        return {OUTPUTS_FILE: safetensors.torch.save({"views": parameters, **stored}),
                META_FILE: (json.dumps(meta, indent=2) + "\n").encode()}

    entry = load_or_build(root, key, build, what=f"teacher outputs {key} ({views} views)", setting="paths.teacher_dir")
    tensors = safetensors.torch.load(entry.files[OUTPUTS_FILE])
    meta = json.loads(entry.files[META_FILE])
    datamodule.teacher_views = TeacherViews(source, tensors.pop("views"), SoftLabels(tensors, meta["num_classes"]))
    return {"source": "built" if entry.built else "cache", "path": str(entry.path), "key": key} | meta


def compressed_view_logits(model: nn.Module, source: ViewSource, parameters: torch.Tensor, top_k: int | None,
                           device: torch.device) -> dict[str, torch.Tensor]:
    """`compress(logits, top_k)` of `model`'s logits `[K, N, C]` (eval mode, no gradient, on `device`) on view
    `k` of image `i` (`source.inputs` under `parameters[k, i]`), for every view of `parameters` `[K, N, 3]`."""
    origin, training = next(model.parameters()).device, model.training
    model.to(device).eval()
    on_device, views = source.to(device), parameters.to(device)
    per_view = []
    with torch.no_grad():
        for view in views:
            logits = torch.cat([model(on_device.inputs(index, view[index])).float().cpu()
                                for index in torch.arange(len(view), device=device).split(BUILD_BATCH)])
            per_view.append(compress(logits, top_k))
    model.to(origin).train(training)
    return {name: torch.stack([stored[name] for stored in per_view]) for name in per_view[0]}
