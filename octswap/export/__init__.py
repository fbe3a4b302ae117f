"""Export models (converted or not) as files that run without octswap.

Two formats, one registry (:data:`FORMATS`):

* ``onnx``: the ``torch.onnx`` dynamo exporter, then octswap's ONNX Runtime rewrites
  (:mod:`octswap.export.rewrites`) and octswap's metadata in the model's metadata
  properties. Runs in ONNX Runtime, TensorRT, OpenVINO.
* ``pt2``: a ``torch.export`` program (``torch.export.load(path).module()``), with
  octswap's metadata as the extra file ``octswap.json``.

Every export is of the *reference* computation (eval mode, BatchNorm folded into the
convs, never the oneDNN inference kernels of :mod:`octswap.kernels`) and is validated
before it is written (:mod:`octswap.export.validation`): the file is run on inputs at
the probe size and at a second shape (batch 1, or with dynamic height and width a size
of the other parity) and compared with the PyTorch model. Height and width are fixed at
the probe size unless ``dynamic=True``: ONNX Runtime runs such a file in its fast layout
in any session.

Example:
    >>> import octswap, torchvision
    >>> converted, plan = octswap.convert(torchvision.models.resnet18(), alpha=0.25)
    >>> result = export_model(converted, "oct.onnx", input_shape=(3, 224, 224))   # doctest: +SKIP
    >>> result.validation.passed                                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

from octswap.export.exporting import (FORMATS, ExportFormat, ExportResult, check_export_options, export_model,
                                      reference_model)  # fmt: skip
from octswap.export.validation import Check, Validation

__all__ = ["FORMATS", "Check", "ExportFormat", "ExportResult", "Validation", "check_export_options", "export_model",
           "reference_model"]  # fmt: skip
