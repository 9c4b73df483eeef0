"""The ``cnn`` family: convolutional baselines on the classification task (no attention)."""

from __future__ import annotations

from attnkit.models.cnn.model import CNNConfig, build_cnn
from attnkit.models.registry import Family, register_family

FAMILY = register_family(
    Family(
        name="cnn",
        schema=CNNConfig,
        build=lambda cfg: build_cnn(cfg.model),
        task="classification",
        variants={
            "small": "3 conv stages (32, 64, 128 channels), 0.29M parameters",
            "resnet18": "ResNet-18 with the CIFAR stem (3x3, no max-pool), 11.2M parameters",
        },
        description="convolutional baselines (small CNN, ResNet-18 for CIFAR)",
    )
)
