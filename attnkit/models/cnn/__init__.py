"""Convolutional baselines for the classification task: a small CNN and ResNet-18 for CIFAR."""

from attnkit.models.cnn.model import CNNConfig, SmallCNN, build_cnn, resnet18_cifar

__all__ = ["CNNConfig", "SmallCNN", "build_cnn", "resnet18_cifar"]
