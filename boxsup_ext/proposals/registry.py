"""Plug-in registry of proposal methods.

A method is a function ``fn(image uint8 [H, W, 3], boxes float32 [M, 4], **options) ->
(units int32 [H, W], members int64 [N, ceil(U / 64)], scores float32 [N])``. Register one with
``register_method("name", fn)`` (or as a decorator) and ``generate_proposals`` and the CLI can use
it by name; nothing else needs to change. Methods that read per-image files (e.g. MCG's ``.mat``)
register with ``needs_image_id=True`` and receive ``image_id=...`` as a keyword.

The options a method takes are the keyword parameters of its function (after image and boxes);
:meth:`ProposalMethod.check_options` refuses other names, and values of another kind than the
parameter's annotation or default, before anything is computed or written. A method records what
its output depends on (``uses_boxes``, ``uses_pixels``, both True unless registered otherwise), so
a store can tell when an entry is stale: built from other boxes or other image content than the
dataset now holds.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from boxsup_ext import core
from boxsup_ext.utils import InputError

MethodFn = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ProposalMethod:
    """A registered method: call it like the function it wraps."""

    name: str
    fn: MethodFn
    needs_image_id: bool = False
    uses_boxes: bool = True
    uses_pixels: bool = True

    def __call__(self, image: np.ndarray, boxes: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.fn(image, boxes, **options)

    def run(self, image: np.ndarray, boxes: np.ndarray, image_id: str, **options):
        """Call the method for one image and check its output; returns (units, members, scores)."""
        if self.needs_image_id:
            options = dict(options, image_id=image_id)
        units, members, scores = self.fn(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), **options)
        candidates, scores = check_candidates(units, members, scores, image.shape[0], image.shape[1], f"method {self.name!r} on image {image_id!r}")
        return candidates.units, candidates.members, scores

    def options(self) -> dict[str, inspect.Parameter]:
        """The options the method takes by name (its keyword parameters after image and boxes)."""
        parameters = list(inspect.signature(self.fn).parameters.values())[2:]
        return {
            p.name: p
            for p in parameters
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and not (self.needs_image_id and p.name == "image_id")
        }

    def accepts(self, name: str) -> bool:
        """Whether the method takes an option called ``name``."""
        return name in self.options() or any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse unknown option names, missing required options and values of the wrong kind.

        Names are checked against the function's signature (a function taking ``**options``
        accepts any further name); values against the parameter's annotation, else the kind of
        its default (a tuple default is a list of such items, or a comma-separated string).
        Raises InputError naming the option and what it takes.
        """
        known = self.options()
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable annotations of a plug-in: fall back on the defaults
            hints = {}
        for name, value in options.items():
            if name not in known:
                if self.accepts(name):  # the function takes **options
                    continue
                raise InputError(
                    f"proposal method {self.name!r} has no option {name!r} (--param {name}=...); "
                    f"its options are: {', '.join(sorted(known)) or 'none'}"
                )
            expected = _expected_kind(known[name].default, hints.get(name))
            if expected is not None and not _value_fits(value, expected):
                raise InputError(
                    f"proposal method {self.name!r} option {name!r} must be {_describe(expected)}, got {value!r} "
                    f"(--param {name}=...)"
                )
        missing = sorted(n for n, p in known.items() if p.default is p.empty and n not in options)
        if missing:
            raise InputError(
                f"proposal method {self.name!r} needs option {missing[0]!r}; pass it as --param {missing[0]}=..."
            )


# An option's expected kind: a tuple of scalar types, or ("list", item types).
_SCALARS = (bool, int, float, str, type(None))


def _expected_kind(default: Any, hint: Any):
    if hint is not None:
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if all(arg in _SCALARS for arg in args):
            return tuple(args)
        return None
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, (tuple, list)):
        items = {type(item) for item in default}
        if items and items <= {int, float}:
            return ("list", (float,))  # numbers: (100, 200) as well as [150.5]
        return ("list", tuple(items)) if len(items) == 1 and items <= set(_SCALARS) else None
    return (type(default),) if type(default) in _SCALARS else None


def option_items(value) -> list:
    """The items of a list option given as a list or as a comma- (or semicolon-) separated string."""
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    return [v.strip() if isinstance(v, str) else v for v in value]


def _scalar_fits(value: Any, allowed: tuple) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed and math.isfinite(value)
    if value is None:
        return type(None) in allowed
    return isinstance(value, str) and str in allowed


def _value_fits(value: Any, expected) -> bool:
    if expected[0] != "list":
        return _scalar_fits(value, expected)
    item_types = expected[1]
    if isinstance(value, str):
        items: list = option_items(value)
        if str not in item_types:
            try:
                items = [float(v) for v in items]
            except ValueError:
                return False
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return False
    return bool(items) and all(_scalar_fits(item, item_types) for item in items)


_KIND_NAMES = {bool: "true/false", int: "integer", float: "finite number", str: "text", type(None): "null"}


def _describe(expected) -> str:
    if expected[0] == "list":
        return "a non-empty list (or comma-separated string) of " + " or ".join(_KIND_NAMES[t] for t in expected[1]) + " items"
    return " or ".join(_KIND_NAMES[t] for t in expected)


_METHODS: dict[str, ProposalMethod] = {}


def register_method(
    name: str,
    fn: MethodFn | None = None,
    *,
    needs_image_id: bool = False,
    uses_boxes: bool = True,
    uses_pixels: bool = True,
    overwrite: bool = False,
):
    """Register ``fn`` under ``name``; usable as ``register_method(name, fn)`` or ``@register_method(name)``.

    ``uses_boxes`` / ``uses_pixels``: whether the output depends on the image's boxes / pixel
    values (a store then checks each entry against them); leave them True when unsure.
    """

    def add(function: MethodFn) -> MethodFn:
        if name in _METHODS and not overwrite and _METHODS[name].fn is not function:
            raise ValueError(f"proposal method {name!r} is registered already; pass overwrite=True to replace it")
        _METHODS[name] = ProposalMethod(name, function, needs_image_id, uses_boxes, uses_pixels)
        return function

    return add if fn is None else add(fn)


def get_method(name: str) -> ProposalMethod:
    """The method registered as ``name``; an unknown name is an InputError listing the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"proposal method {name!r} is unknown; choose one of: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


def check_candidates(units, members, scores, height: int, width: int, where: str) -> tuple[core.Candidates, np.ndarray]:
    """Validate and normalise a method's output to (:class:`boxsup_ext.core.Candidates`, float32 [N]):
    the candidate form as ``Candidates`` checks it, and one score per candidate. ``where`` (may be
    empty) starts each ValueError's message."""
    prefix = f"{where}: " if where else ""
    try:
        candidates = core.Candidates(units, members, shape=(height, width))
    except ValueError as err:
        raise ValueError(f"{prefix}{err}") from None
    scores = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != candidates.num_candidates:
        raise ValueError(f"{prefix}{candidates.num_candidates} candidates but {scores.shape[0]} scores")
    return candidates, scores
