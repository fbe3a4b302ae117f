"""Inference preparation: fold BatchNorm, channels-last, packed weights, optional ``torch.compile``.

Applied alike to an original and a converted model, so that latency comparisons
compare like with like, and recorded in checkpoints (:class:`InferenceOptions`), so
that :func:`octswap.load` rebuilds exactly the structure that was saved.

Folding is structural and deterministic: which BatchNorms fold depends only on the
graph, never on the values, so a checkpoint can replay it on a freshly built model
and then load the folded weights.

Octave convs need no switch of their own: in eval mode without autograd, on CPU,
with channels-last float inputs, :class:`~octswap.octave.OctaveConv2d` sums its
paths inside fused oneDNN convolutions (see :mod:`octswap.kernels`).
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from octswap.errors import InputError
from octswap.layers import OctaveBatchNorm2d, OctaveConv2d, OctaveConvBlock, pack_convs
from octswap.inplace_adds import add_into, inplace_adds
from octswap.rewrite.layer import replace_module

__all__ = [
    "InferenceOptions",
    "add_into",
    "fold_batchnorm",
    "inference_options",
    "inplace_adds",
    "optimize_for_inference",
    "unwrap_compiled",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOptions:
    """How a model was prepared for inference.

    Attributes:
        fold_bn: Fold each eval-mode BatchNorm into the conv that feeds it.
        channels_last: Store 4-D weights channels-last (inputs follow after the first conv).
        prepack: Keep each conv's weight in oneDNN's blocked layout, made once instead
            of on every call (:class:`octswap.kernels.PackedConv2d`; CPU inference only,
            same state dict).
        compile: Wrap the model in ``torch.compile`` (applied when the model is loaded,
            never stored: compiled code is specific to the machine).
    """

    fold_bn: bool = True
    channels_last: bool = True
    prepack: bool = True
    compile: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceOptions:
        """Build from plain data; unknown keys and non-boolean values are errors naming them.

        Example:
            >>> InferenceOptions.from_dict({"fold_bn": True, "compile": False}).channels_last
            True
        """
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise InputError(f"inference option {key!r} is unknown (known: {', '.join(sorted(known))})")
            if not isinstance(value, bool):
                raise InputError(f"inference option {key!r} must be true or false, got {value!r}")
        return cls(**dict(data))


# ------------------------------------------------------------------ folding
# Each folder takes (producer, bn) in eval mode and returns the module that replaces
# the producer, computing producer-then-bn. One entry per (producer, norm) kind.
Folder = Callable[[nn.Module, nn.Module], nn.Module]


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``y = x * scale + shift`` an eval-mode BatchNorm computes."""
    var, mean = bn.running_var, bn.running_mean
    assert var is not None and mean is not None  # checked by _foldable
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def _fold_plain(conv: nn.Module, bn: nn.Module) -> nn.Module:
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.weight, fused.bias = weight, bias
    return fused


@torch.no_grad()
def _scale_paths(conv: OctaveConv2d, branch: str, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``y * scale + shift`` into the paths that write output ``branch`` ("high"/"low")."""
    names = ("h2h", "l2h") if branch == "high" else ("h2l", "l2l")
    paths = [(name, getattr(conv, name)) for name in names if getattr(conv, name) is not None]
    if conv._combine == "sum":
        # Every path writes every channel of the branch and their outputs are summed:
        # all weights scale, and the shift goes on one path only (the one with a bias
        # if any, so the fold adds no parameter where one exists).
        carrier = next((p for _, p in paths if p.bias is not None), paths[0][1])
        for _, path in paths:
            path.weight.mul_(scale.view(-1, 1, 1, 1))
        _add_bias(carrier, shift if carrier.bias is None else carrier.bias * scale + shift)
        return
    # Grouped: each path owns a run of the branch's channels, in path order.
    start = 0
    for _, path in paths:
        rows = slice(start, start + path.out_channels)
        path.weight.mul_(scale[rows].view(-1, 1, 1, 1))
        bias = shift[rows] if path.bias is None else path.bias * scale[rows] + shift[rows]
        _add_bias(path, bias)
        start = rows.stop


def _add_bias(conv: nn.Conv2d, bias: torch.Tensor) -> None:
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def _fold_octave(conv: nn.Module, bn: nn.Module) -> nn.Module:
    assert isinstance(conv, OctaveConv2d)
    fused = copy.deepcopy(conv)
    if isinstance(bn, OctaveBatchNorm2d):
        _scale_paths(fused, "high", *_bn_scale_shift(bn.bn_h))
        if bn.bn_l is not None:
            _scale_paths(fused, "low", *_bn_scale_shift(bn.bn_l))
    else:  # a plain BatchNorm after a "last" octave conv (tensor output)
        _scale_paths(fused, "high", *_bn_scale_shift(bn))
    return fused


def _fold_block(block: nn.Module, bn: nn.Module) -> nn.Module:
    # A layer-mode block returns its channels in the original order: high, then low.
    assert isinstance(block, OctaveConvBlock) and isinstance(bn, nn.BatchNorm2d)
    fused = copy.deepcopy(block)
    scale, shift = _bn_scale_shift(bn)
    high = fused.conv.out_high
    _scale_paths(fused.conv, "high", scale[:high], shift[:high])
    if fused.conv.out_low:
        _scale_paths(fused.conv, "low", scale[high:], shift[high:])
    return fused


FOLDERS: dict[tuple[type[nn.Module], type[nn.Module]], Folder] = {
    (nn.Conv2d, nn.BatchNorm2d): _fold_plain,
    (OctaveConv2d, OctaveBatchNorm2d): _fold_octave,
    (OctaveConv2d, nn.BatchNorm2d): _fold_octave,
    (OctaveConvBlock, nn.BatchNorm2d): _fold_block,
}


def _norms(bn: nn.Module) -> list[nn.BatchNorm2d]:
    if isinstance(bn, OctaveBatchNorm2d):
        return [b for b in (bn.bn_h, bn.bn_l) if b is not None]
    return [bn] if isinstance(bn, nn.BatchNorm2d) else []


def _foldable(producer: nn.Module, bn: nn.Module) -> Folder | None:
    folder = FOLDERS.get((type(producer), type(bn)))
    if folder is None:
        return None
    # Only inference-mode statistics fold; a training BatchNorm normalises by the batch.
    if bn.training or any(b.running_mean is None or b.running_var is None for b in _norms(bn)):
        return None
    if isinstance(producer, OctaveConv2d) and isinstance(bn, nn.BatchNorm2d) and producer.out_low:
        return None
    if isinstance(producer, OctaveConv2d) and isinstance(bn, OctaveBatchNorm2d) and bn.low != producer.out_low:
        return None
    return folder


def _producer_of(bn_node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The call_module node feeding ``bn_node`` and the getitem nodes in between, if only it."""
    if len(bn_node.args) != 1 or bn_node.kwargs:
        return None
    arg = bn_node.args[0]
    if isinstance(arg, fx.Node):
        if arg.op == "call_module" and list(arg.users) == [bn_node]:
            return arg, []
        return None
    # A pair: (getitem(conv, 0), getitem(conv, 1)), each used only by this BatchNorm.
    if not isinstance(arg, (tuple, list)) or len(arg) != 2:
        return None
    items = list(arg)
    if not all(
        isinstance(n, fx.Node) and n.op == "call_function" and n.target is operator.getitem and n.args[1] == i
        and list(n.users) == [bn_node]
        for i, n in enumerate(items)
    ):  # fmt: skip
        return None
    source = items[0].args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or items[1].args[0] is not source:
        return None
    if set(source.users) != set(items):
        return None
    return source, items


def _fold_candidates(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, fx.Node, list[fx.Node], Folder]]:
    """Each (BatchNorm node, producer node, getitem nodes between, folder) that can fold.

    A BatchNorm folds when it is called once, reads only one conv's output (a tensor, or
    both halves of a pair) and that conv is called once and read by nothing else.
    Yields lazily, so a caller may edit the graph around the pair it was given.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for bn_node in list(gm.graph.nodes):
        if bn_node.op != "call_module" or calls.get(bn_node.target) != 1:
            continue
        found = _producer_of(bn_node)
        if found is None:
            continue
        producer_node, items = found
        if calls.get(producer_node.target) != 1:  # a shared conv cannot take one caller's BatchNorm
            continue
        folder = _foldable(modules[producer_node.target], modules[bn_node.target])
        if folder is not None:
            yield bn_node, producer_node, items, folder


def _fold_graph(gm: fx.GraphModule) -> int:
    folded = 0
    for bn_node, producer_node, items, folder in _fold_candidates(gm):
        producer, bn = gm.get_submodule(producer_node.target), gm.get_submodule(bn_node.target)
        replace_module(gm, producer_node.target, folder(producer, bn))
        bn_node.replace_all_uses_with(producer_node)
        gm.graph.erase_node(bn_node)
        for item in items:
            gm.graph.erase_node(item)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return folded


def _fold_traced(module: nn.Module, gm: fx.GraphModule) -> int:
    """Fold in ``module`` itself the pairs its trace ``gm`` shows (the BatchNorm becomes an identity).

    The module keeps its own class and eager ``forward``: only the conv's weights change
    and the BatchNorm's slot holds ``nn.Identity``, which passes a tensor or a pair through.
    """
    folded = 0
    for bn_node, producer_node, _, folder in _fold_candidates(gm):
        producer, bn = module.get_submodule(producer_node.target), module.get_submodule(bn_node.target)
        replace_module(module, producer_node.target, folder(producer, bn))
        replace_module(module, bn_node.target, nn.Identity())
        folded += 1
    return folded


def _fold_adjacent(container: nn.Sequential) -> int:
    """Adjacent (conv, BatchNorm) children of an ``nn.Sequential``, which runs them in order."""
    folded = 0
    names = list(container._modules)
    for first, second in zip(names, names[1:]):
        producer, bn = container._modules[first], container._modules[second]
        if producer is None or bn is None:
            continue
        folder = _foldable(producer, bn)
        if folder is None:
            continue
        container._modules[first] = folder(producer, bn)
        container._modules[second] = nn.Identity()
        folded += 1
    return folded


_NORMS = (nn.BatchNorm2d, OctaveBatchNorm2d)


def _fold_parts(module: nn.Module) -> int:
    """For a model fx cannot trace as a whole: fold inside each part that traces.

    Walks the module tree top-down. A ``GraphModule`` (a region converted in graph mode) is
    folded as a graph; any other child that fx traces is folded in place by its trace
    (:func:`_fold_traced`), so that an original detector's backbone folds as the converted
    one's region does; a child that does not trace is walked in turn, and an
    ``nn.Sequential`` among those gets its adjacent (conv, BatchNorm) children folded.
    """
    folded = 0
    for child in module.children():
        if isinstance(child, fx.GraphModule):
            folded += _fold_graph(child)
            inplace_adds(child)
            continue
        if not any(isinstance(m, (*_NORMS, fx.GraphModule)) for m in child.modules()):
            continue
        try:
            graph = _LeafTracer().trace(child)
        except Exception:  # noqa: BLE001 - fx raises many types on untraceable code
            folded += _fold_parts(child)
            continue
        folded += _fold_traced(child, fx.GraphModule(child, graph))
        for region in child.modules():
            if isinstance(region, fx.GraphModule):
                inplace_adds(region)
    if isinstance(module, nn.Sequential):
        folded += _fold_adjacent(module)
    return folded


class _LeafTracer(fx.Tracer):
    # Octave modules take and return pairs; fx must call them, not trace into them.
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (OctaveConv2d, OctaveBatchNorm2d, OctaveConvBlock)) or super().is_leaf_module(
            m, module_qualified_name
        )


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode BatchNorm that only reads one conv's output into that conv.

    Handles plain convs, octave convs (their pair BatchNorm, or a plain one after a
    tensor output) and layer-mode octave blocks. Models are traced with ``torch.fx``
    (a ``GraphModule`` is edited directly); a model fx cannot trace gets the
    parts that trace folded instead (each ``GraphModule`` it holds, a region converted in
    graph mode, as a graph; any other traceable submodule in place; adjacent pairs in an
    ``nn.Sequential`` that does not trace). Call it on a model in
    eval mode; a BatchNorm still in training mode is left alone. The graph also gets
    its residual adds back in place (:func:`inplace_adds`): tracing records eager
    ``out += identity`` as an out-of-place add, which would make a traced original
    slower than the eager one it stands for.

    Returns:
        The folded model (a ``GraphModule`` when it was traced).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        >>> folded = fold_batchnorm(net)
        >>> sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        0
    """
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, fx.GraphModule):
        folded = _fold_graph(target)
    else:
        try:
            graph = _LeafTracer().trace(target)
        except Exception as err:  # noqa: BLE001 - fx raises many types on untraceable code
            logger.info("fold_batchnorm: %s cannot be traced (%s); folding the parts that trace",
                        type(target).__name__, type(err).__name__)  # fmt: skip
            folded = _fold_parts(target)
        else:
            traced = fx.GraphModule(target, graph, class_name=type(target).__name__)
            traced.training = target.training
            folded = _fold_graph(traced)
            target = traced
    logger.info("folded %d BatchNorm layers", folded)
    if isinstance(target, fx.GraphModule):
        inplace_adds(target)
    return target


def optimize_for_inference(
    model: nn.Module,
    options: InferenceOptions | None = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """Prepare a model (original or converted) for fast inference.

    Puts it in eval mode, folds BatchNorm, converts weights to channels-last, packs
    conv weights for oneDNN and, when asked, wraps it in ``torch.compile``. Apply the
    same options to an original and a converted model to compare their latency fairly.

    Example:
        >>> fast = optimize_for_inference(converted)                                    # doctest: +SKIP
        >>> y = fast(x.contiguous(memory_format=torch.channels_last))                   # doctest: +SKIP
    """
    options = options if options is not None else InferenceOptions()
    target = unwrap_compiled(model if inplace else copy.deepcopy(model))
    previous = inference_options(target)
    target.eval()
    if options.fold_bn:
        target = fold_batchnorm(target, inplace=True)
    if options.channels_last:
        target = target.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    if options.prepack:
        pack_convs(target)
    if previous is not None:  # preparing twice keeps what the first time did
        options = InferenceOptions(**{k: v or getattr(previous, k) for k, v in options.to_dict().items()})
    # The model remembers how it was prepared, so octswap.save can record it.
    target.octswap_inference = options
    if options.compile:
        return torch.compile(target)  # type: ignore[return-value]
    return target


def inference_options(model: nn.Module) -> InferenceOptions | None:
    """How :func:`optimize_for_inference` prepared ``model`` (None if it did not)."""
    value = getattr(unwrap_compiled(model), "octswap_inference", None)
    return value if isinstance(value, InferenceOptions) else None


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (whose state-dict keys carry a prefix)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model
