"""A detector for the digit scenes of ``bench_dense.py``, built from torchvision's parts.

torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn`` reads its backbone at strides 16
and 32 (8x8 and 4x4 maps on a 128x128 scene) with anchors from 32 to 512 pixels; trained
here from scratch it reached 19.6 mAP@0.5 (README). This one is torchvision's
``FasterRCNN`` on a ResNet-18 with an FPN over strides 4 to 32
(``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``, trainable BatchNorm
as a model trained from scratch needs) and anchors sized for 36-64 pixel digits.

Given to octswap as a user's model: ``benchmarks/detectors.py:fasterrcnn_resnet18_fpn``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone


def fasterrcnn_resnet18_fpn(num_classes: int = 11, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-18 FPN (levels at strides 4, 8, 16, 32 and a pooled 64), random
    weights; ``kwargs`` go to ``FasterRCNN`` (``min_size``, ``max_size``...)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5)  # fmt: skip
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors, **kwargs)
