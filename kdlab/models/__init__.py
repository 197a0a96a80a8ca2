"""Models that kdlab trains and distils; every config's `model.teacher` / `model.student` names one.

By name (timm-style): `kdlab.models.create(name, num_classes=...)`, every name in
`kdlab.models.MODELS`: the CIFAR zoo (`resnet8` ... `resnet110`, `resnet8x4`, `resnet32x4`,
`resnet18/34/50`, `wrn_16_1/16_2/40_1/40_2`, `vgg8/11/13/16/19`, `mobilenetv2`, `shufflenetv1/v2`)
and torchvision's ImageNet classifiers as `tv_<torchvision name>`.
"""

from kdlab.models import cifar, torchvision_models  # noqa: F401  (importing registers the models)
from kdlab.models.registry import MODELS, create, register
from kdlab.models.small_cnn import SmallCNN
from kdlab.models.small_images import SmallImageNet
from kdlab.models.torchvision_models import TorchvisionClassifier

__all__ = ["MODELS", "SmallCNN", "SmallImageNet", "TorchvisionClassifier", "create", "register"]
