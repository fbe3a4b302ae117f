"""A traced, converted module keeps its original's methods and attributes.

``fx.GraphModule`` keeps only what its graph calls: the submodules and tensors it reads, under
plain ``nn.Module`` containers. A model's own code often calls more than ``forward`` on a part
it holds: RetinaNet's and FCOS's train-mode forward calls ``self.head.compute_loss``, which
calls ``self.head.classification_head.compute_loss``, reading ``num_classes``; smp's models
have ``predict``. :func:`carry_over` gives the converted module (the region or the whole
model) the methods and plain attributes of the original's class, and each container the
graph kept under it those of the original module at its place. Their ``forward`` is not
carried: a container's forward was traced into its parent's graph and raises if called.

Methods other than ``forward`` run the original's code on the converted layers: those that
read attributes and call other methods (a head's loss) work as in the original; one that
calls converted layers itself is not rewritten by the conversion (only ``forward`` is traced).

Deep copies keep all of it (:class:`CarriedGraphModule`).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY

__all__ = ["CarriedGraphModule", "carried_class", "carry_over"]

_CONTAINERS = "octswap_carried_containers"  # meta key: {path: (original class, plain attributes)}
_OWN = frozenset(dir(fx.GraphModule))  # nn.Module's and GraphModule's own names are never replaced
_INTERNAL = frozenset(vars(nn.Module()))  # the instance attributes every nn.Module has


def _methods(cls: type) -> dict[str, Any]:
    """The class attributes ``cls`` defines above ``nn.Module`` (methods, properties,
    constants), but ``forward``, dunders and names ``nn.Module``/``GraphModule`` have."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is nn.Module or not issubclass(klass, nn.Module):
            continue
        for name, value in vars(klass).items():
            if name == "forward" or name in _OWN or (name.startswith("__") and name.endswith("__")):
                continue
            found.setdefault(name, value)
    return found


def _plain_attributes(module: nn.Module, taken: Any) -> dict[str, Any]:
    """``module``'s own instance attributes that are not nn.Module internals nor in ``taken``."""
    return {k: v for k, v in vars(module).items() if k not in _INTERNAL and k not in taken}


class CarriedGraphModule(fx.GraphModule):
    """A ``GraphModule`` whose deep copies keep the containers' carried classes and the class's
    name (``GraphModule.__init__`` renames a copy's per-instance class ``GraphModule``)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> CarriedGraphModule:
        res = super().__deepcopy__(memo)
        type(res).__name__ = type(self).__name__
        _restore_containers(res, res.meta.get(_CONTAINERS, {}))
        return res


@functools.cache
def carried_class(cls: type) -> type:
    """The ``CarriedGraphModule`` subclass with ``cls``'s methods (one per original class)."""
    return type(f"Octave{cls.__name__}", (CarriedGraphModule,), {**_methods(cls), "__module__": __name__})


def _traced_away(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"{type(self).__name__}.forward was traced into its parent's graph when the model was "
                       f"converted: call the parent (the converted model) instead")  # fmt: skip


@functools.cache
def _container_class(cls: type) -> type:
    """An ``nn.Module`` with ``cls``'s methods, whose forward says it was traced away."""
    return type(f"Traced{cls.__name__}", (nn.Module,), {**_methods(cls), "forward": _traced_away,
                                                       "__module__": __name__})  # fmt: skip


def _restore_containers(gm: nn.Module, containers: dict[str, tuple[type, dict[str, Any]]]) -> None:
    for path, (cls, attributes) in containers.items():
        try:
            module = gm.get_submodule(path)
        except AttributeError:
            continue
        if type(module) is nn.Module:
            module.__class__ = _container_class(cls)
            module.__dict__.update(copy.copy(attributes))


def carry_over(new: CarriedGraphModule, original: nn.Module) -> CarriedGraphModule:
    """Give ``new`` -- a :func:`carried_class` of the original's class, built from a trace of
    ``original`` -- the original's plain attributes, and every plain container the graph kept
    under it the methods and attributes of the original's module at its place. In place;
    returns ``new``.

    Example:
        >>> head = torchvision.models.detection.retinanet_resnet50_fpn().head   # doctest: +SKIP
        >>> gm = carried_class(type(head))(head, fx.symbolic_trace(head).graph)   # doctest: +SKIP
        >>> carry_over(gm, head).classification_head.num_classes                  # doctest: +SKIP
        91
    """
    attributes = _plain_attributes(original, vars(new))
    preserved = new.meta.setdefault(_USER_PRESERVED_ATTRIBUTES_KEY, {})
    preserved.update(attributes)
    for name, value in attributes.items():
        setattr(new, name, value)
    containers: dict[str, tuple[type, dict[str, Any]]] = {}
    for path, module in new.named_modules():
        if not path or type(module) is not nn.Module:
            continue
        try:
            source = original.get_submodule(path)
        except AttributeError:
            continue
        if type(source) is not nn.Module:
            containers[path] = (type(source), _plain_attributes(source, vars(module)))
    new.meta[_CONTAINERS] = containers
    _restore_containers(new, containers)
    return new
