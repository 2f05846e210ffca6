"""Network architectures for RiFT: CIFAR ResNets, PreAct ResNet, WideResNets, a small CNN for
tests, and torchvision ImageNet classifiers. All take images in [0, 1] and normalise inside."""

from rift.models.registry import build_model, check_model_accepts, list_architectures

__all__ = ["build_model", "check_model_accepts", "list_architectures"]
