"""Builder arguments a ``**kwargs`` factory drops without a word are named; those it uses are not."""

from __future__ import annotations

import inspect

import pytest
from torchvision import models

from octswap.builder_args import unclaimed_arguments


@pytest.mark.parametrize(
    "name,kwargs,unclaimed",
    [
        # FasterRCNN.__init__ names rpn_nms_thresh; the misspelling reaches GeneralizedRCNNTransform's **kwargs.
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {"rpn_nms_thres": 1.0, "box_score_thresh": 0.0}, ["rpn_nms_thres"]),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {"_skip_resize": True, "min_size": 320}, []),  # popped, not named
        ("deeplabv3_mobilenet_v3_large", {"aux_los": True, "num_classes": 3}, ["aux_los"]),  # **kwargs unused
        ("mobilenet_v3_small", {"reduced_tail": True, "dilated": True}, []),  # named by _mobilenet_v3_conf
        ("resnet18", {"num_classes": 3, "zero_init_residual": True}, []),
    ],
)
def test_unclaimed_arguments_of_torchvision_builders(name, kwargs, unclaimed):
    builder = models.get_model_builder(name)
    extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
    model = builder(weights=None, **extra, **kwargs)
    assert unclaimed_arguments(builder, model, kwargs) == unclaimed


def test_a_factory_without_var_keyword_claims_nothing_itself():
    def factory(num_classes: int = 10):  # Python refuses unknown names: nothing to check
        return models.resnet18(num_classes=num_classes)

    assert unclaimed_arguments(factory, factory(3), {"num_classes": 3}) == []
