"""Zoo runs: convert many models at several alphas, for CI, with results machines and people read.

A manifest (YAML) lists models -- torchvision names, globs such as ``resnet*``, timm
names and globs (``timm:resnet*``), or ``package.module:factory`` -- with alphas, policy, input size, weights and per-model
overrides. Each (model, alpha) runs in its own worker process, so a crash or an
out-of-memory kill costs one record, not the run. Results are written to a folder:
``results.json``, ``results.csv``, ``summary.md`` and ``junit.xml``. A CI matrix runs
:meth:`Manifest.shard` K of N on each machine and :func:`merge_results` joins them.

Manifest::

    version: 1
    defaults:                 # every key optional
      alphas: [0.25, 0.5]
      policy: configs/default.yaml     # relative to the manifest's folder
      input_size: 224                  # N, HxW or CxHxW
      mode: auto                       # auto (graph, else layer), graph or layer
    models:
      - resnet*                        # a name or glob (torchvision classification models)
      - name: mobilenet_v*
        exclude: [mobilenet_v3_small]
        policy: configs/mobilenet_v2.yaml
      - name: fcn_resnet50             # segmentation: dict outputs are fine
      - name: fasterrcnn_resnet50_fpn
        part: backbone                 # convert model.backbone (detection models)
      - name: mypkg.nets:build
        kwargs: {num_classes: 10}
        input_size: 3x64x64
"""

from __future__ import annotations

from octswap.zoo.manifest import (
    Manifest,
    ZooTask,
    expand_models,
    load_manifest,
    manifest_from_cli,
    manifest_from_dict,
    parse_shard,
)
from octswap.zoo.orchestration import (
    TaskSelection,
    ZooRun,
    check_out_dir,
    merge_folders,
    run_selection,
    select_tasks,
)
from octswap.zoo.results import (
    RESULT_FIELDS,
    MergedRun,
    check_gates,
    merge_results,
    read_results,
    summary_markdown,
    write_results,
)
from octswap.zoo.runner import _run_task, run_zoo  # noqa: F401 - _run_task: tests run one task in-process

__all__ = [
    "RESULT_FIELDS",
    "Manifest",
    "MergedRun",
    "TaskSelection",
    "ZooRun",
    "ZooTask",
    "check_gates",
    "check_out_dir",
    "expand_models",
    "load_manifest",
    "manifest_from_cli",
    "manifest_from_dict",
    "merge_folders",
    "merge_results",
    "parse_shard",
    "read_results",
    "run_selection",
    "run_zoo",
    "select_tasks",
    "summary_markdown",
    "write_results",
]
