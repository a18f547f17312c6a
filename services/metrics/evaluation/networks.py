"""Standard classifier architectures for greyscale chest X-rays (torchvision), one builder.

* ``resnet18`` (He et al. 2016): the independent classifier's network. ImageNet stem (7×7 stride 2 + max-pool);
  at 64 px the last stage sees 2×2 — enough for whole-lung findings, and 4× cheaper than a stride-1 stem.
* ``mobilenet_v3_small`` (Howard et al. 2019): the utility protocol's default. Utility trains a fresh classifier
  for every seed × ratio × protocol (dozens per run); on one CPU core at 64 px it trains ~5× faster than
  ResNet-18 (253 vs 50 img/s, batch 64, measured here), which is what lets a default run fit in 20 minutes.

Both take (N, 1, R, R) in [0, 1]; the first convolution is rebuilt for one channel (no ImageNet weights:
none are available offline and chest X-rays are far from ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn as nn

ARCHS = ("resnet18", "mobilenet_v3_small")
MEAN, STD = 0.5, 0.25  # input normalisation ([0, 1] chest X-rays)


class Classifier(nn.Module):
    """``backbone`` (features → ``num_features``) + a linear ``head``; :meth:`features` is what feature-extraction
    utility fine-tunes on."""

    def __init__(self, arch: str, num_outputs: int):
        super().__init__()
        import torchvision

        if arch == "resnet18":
            net = torchvision.models.resnet18(num_classes=num_outputs)
            net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            self.num_features = net.fc.in_features
            net.fc = nn.Identity()
        elif arch == "mobilenet_v3_small":
            net = torchvision.models.mobilenet_v3_small(num_classes=num_outputs)
            net.features[0][0] = nn.Conv2d(1, 16, 3, 2, 1, bias=False)
            self.num_features = net.classifier[0].in_features
            net.classifier = nn.Identity()
        else:
            raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
        self.arch = arch
        self.backbone = net
        self.head = nn.Linear(self.num_features, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - MEAN) / STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(arch: str, num_outputs: int) -> Classifier:
    return Classifier(arch, num_outputs)
