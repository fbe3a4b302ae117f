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
the probe size and at a size of the other parity and compared with the PyTorch model.

Example:
    >>> import octswap, torchvision
    >>> converted, plan = octswap.convert(torchvision.models.resnet18(), alpha=0.25)
    >>> result = export_model(converted, "oct.onnx", input_shape=(3, 224, 224))   # doctest: +SKIP
    >>> result.validation.passed                                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

from octswap.export.exporting import FORMATS, ExportFormat, ExportResult, export_model, reference_model
from octswap.export.validation import Check, Validation

__all__ = ["FORMATS", "Check", "ExportFormat", "ExportResult", "Validation", "export_model", "reference_model"]
