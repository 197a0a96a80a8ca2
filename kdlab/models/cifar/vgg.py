"""VGG with batch norm for CIFAR (RepDistiller / mdistiller `vgg*_bn`).

Five stages of 3x3 conv (with bias) -> BN -> ReLU layers; a 2x2 max-pool precedes stages 2-4,
stage 5 keeps the 4x4 resolution of stage 4 at 32x32 inputs (as in the reference, which pools
before stage 5 only for 64x64 inputs); global average pooling; a linear head on 512 features.
Stage outputs are the post-ReLU map of each stage.
"""

from functools import partial

from torch import nn

from kdlab.models.cifar.staged import StagedClassifier, global_pool, init_normal_fan_out
from kdlab.models.registry import register

# Output channels of the conv layers of each of the 5 stages.
LAYOUTS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(StagedClassifier):
    """VGG-BN with the given per-stage conv widths; `feature_dim = 512`."""

    def __init__(self, num_classes: int, layout: tuple[tuple[int, ...], ...], in_channels: int = 3) -> None:
        stages, channels = [], in_channels
        for k, widths in enumerate(layout):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if 0 < k < len(layout) - 1 else []
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            stages.append(nn.Sequential(*layers))
        super().__init__(nn.Identity(), stages, global_pool(), channels, num_classes)
        init_normal_fan_out(self, linear_std=0.01)


for _name, _layout in LAYOUTS.items():
    register(_name)(partial(VGG, layout=_layout))
