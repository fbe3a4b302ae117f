"""Builder arguments a model factory may have dropped without a word.

torchvision's builders (and many user factories) take ``**kwargs``: a misspelled ``--model-arg``
(``rpn_nms_thres=1.0``) then builds the model with its default and no error, and a recipe such as
"NMS off for equal-work timing" silently measures something else. :func:`unclaimed_arguments` lists the
keyword arguments that no parameter could have taken: neither the factory, nor any function or class of
the factory's own module (torchvision's private ``_mobilenet_v3_conf`` pops ``reduced_tail``), nor the
constructor of any class in the built model (``FasterRCNN.__init__`` takes ``rpn_nms_thresh``), nor a
string literal in their source files (``kwargs.pop("_skip_resize", False)``).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def _named_parameters(obj: Any) -> set[str]:
    """The parameter names ``obj`` (a function or a class's constructor) declares; empty when unknown."""
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds}


def _takes_var_keyword(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _module_callables(factory: Callable[..., Any]) -> Iterable[Any]:
    module = inspect.getmodule(factory)
    if module is None:
        return ()
    return (v for v in vars(module).values()
            if (inspect.isfunction(v) or inspect.isclass(v)) and getattr(v, "__module__", None) == module.__name__)


def _model_constructors(model: nn.Module) -> Iterable[Any]:
    seen: set[type] = set()
    for module in model.modules():
        for cls in type(module).__mro__:
            if cls not in seen and issubclass(cls, nn.Module) and cls is not nn.Module:
                seen.add(cls)
                yield cls


def _known_names(factory: Callable[..., Any], model: nn.Module) -> set[str]:
    known = _named_parameters(factory)
    for obj in (*_module_callables(factory), *_model_constructors(model)):
        known |= _named_parameters(obj)
    return known


def _quoted_in_sources(name: str, factory: Callable[..., Any], model: nn.Module) -> bool:
    """Whether ``name`` is a string literal in the factory's or the model classes' source files
    (``kwargs.pop("_skip_resize", False)``: taken without being a parameter)."""
    modules = {inspect.getmodule(factory), *(inspect.getmodule(cls) for cls in _model_constructors(model))}
    pattern = re.compile(rf"""(["']){re.escape(name)}\1""")
    for module in modules - {None}:
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def unclaimed_arguments(factory: Callable[..., Any], model: nn.Module, kwargs: Mapping[str, Any]) -> list[str]:
    """The names in ``kwargs`` that ``factory`` accepted through ``**kwargs`` but nothing could have used.

    Args:
        factory: The builder that made ``model`` (a function or a class).
        model: What it built.
        kwargs: The keyword arguments it was given.

    Returns:
        The unclaimed names, in ``kwargs`` order; empty when the factory declares no ``**kwargs`` (Python
        itself refuses unknown names then) or every name is a parameter somewhere.

    Example:
        >>> from torchvision.models import resnet18
        >>> unclaimed_arguments(resnet18, resnet18(num_classes=3), {"num_classes": 3})
        []
    """
    return _unclaimed(factory, model, kwargs)[0]


def _unclaimed(factory: Callable[..., Any], model: nn.Module, kwargs: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """:func:`unclaimed_arguments`, and the names known (for suggestions)."""
    if not kwargs or not _takes_var_keyword(factory):
        return [], set()
    known = _known_names(factory, model)
    return [name for name in kwargs if name not in known and not _quoted_in_sources(name, factory, model)], known


def warn_unclaimed(name: str, factory: Callable[..., Any], model: nn.Module, kwargs: Mapping[str, Any]) -> list[str]:
    """Log one warning per builder argument :func:`unclaimed_arguments` finds, with the closest known name.

    Returns:
        The unclaimed names.
    """
    unclaimed, names = _unclaimed(factory, model, kwargs)
    known = sorted(names)
    for key in unclaimed:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        logger.warning("model argument %s=%r: %s accepts it through **kwargs but nothing in the model takes a "
                       "parameter of that name, so it probably had no effect%s", key, kwargs[key], name, hint)
    return unclaimed
