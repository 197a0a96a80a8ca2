"""The CIFAR model zoo of the KD literature (RepDistiller / mdistiller definitions), one file per
family; importing it registers every model by name in `kdlab.models.MODELS`."""

from kdlab.models.cifar.mobilenetv2 import MobileNetV2
from kdlab.models.cifar.resnet import CifarResNet, he_resnet
from kdlab.models.cifar.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdlab.models.cifar.staged import StagedClassifier
from kdlab.models.cifar.vgg import VGG
from kdlab.models.cifar.wrn import WideResNet

__all__ = [
    "VGG", "CifarResNet", "MobileNetV2", "ShuffleNetV1", "ShuffleNetV2", "StagedClassifier", "WideResNet", "he_resnet",
]
