"""The options each data kind declares, and the conversion of a spec's ``key=value`` text to them.

A kind's options are the keyword parameters of its constructor and of the base classes it hands ``**kwargs`` to
(``ClassFolders -> FileDataset -> AudioDataset``); a base class's parameters without a default (``items``) are
filled by the subclass, not by users, and are not options. Each value is converted by the parameter's annotation
(``int``, ``float``, ``bool``, ``str``, comma lists, ``Literal``), so ``seed=abc`` or ``clip_secs=2`` ends in one
line that names the spec, the option and what the kind accepts, never in a ``TypeError`` from deep inside.
"""
from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union

from .errors import DatasetError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def declared_options(kind_class: type) -> dict[str, Any]:
    """``{name: annotation}`` of the options ``kind_class`` accepts (see the module doc), in declaration order."""
    options: dict[str, Any] = {}
    first = True
    for klass in kind_class.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        init = vars(klass)["__init__"]
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not evaluate: treat its values as text
            hints = {}
        params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        has_var_kw = False
        for i, p in enumerate(params):
            if p.kind is p.VAR_KEYWORD:
                has_var_kw = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            if (first and i == 0) or (not first and p.default is p.empty):
                continue  # the spec's argument (root, path, N) / a value the subclass supplies
            options.setdefault(p.name, hints.get(p.name, str))
        first = False
        if not has_var_kw:
            break
    return options


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        # str | os.PathLike (a path) is text; otherwise the first type listed (``int | None`` -> int)
        if any(a is str or a is os.PathLike or typing.get_origin(a) is os.PathLike for a in args):
            return str
        return args[0]
    return hint


def _describe(hint: Any) -> str:
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(hint))
    if origin in (list, tuple, Sequence, Iterable):
        inner = (typing.get_args(hint) or (str,))[0]
        return f"a comma list of {_describe(inner)}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(hint, "text")


def convert(hint: Any, text: str) -> Any:
    """``text`` as a value of type ``hint``; ValueError when it is not one."""
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        for a in allowed:
            if str(a) == text.strip():
                return a
        raise ValueError
    if origin in (list, tuple, Sequence, Iterable):
        inner = (typing.get_args(hint) or (str,))[0]
        return tuple(convert(inner, t.strip()) for t in text.split(",") if t.strip())
    if hint is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text


def check_options(kind_class: type, spec: str, raw: dict[str, str]) -> dict[str, Any]:
    """The spec's options ``raw`` (text values) converted to the kind's declared types.

    Raises:
        DatasetError: an unknown option (the known ones listed) or a value that does not convert (its expected type).
    """
    declared = declared_options(kind_class)
    out: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise DatasetError(f"{spec}: unknown option {key!r} for this kind; known options: {known}")
        try:
            out[key] = convert(declared[key], text)
        except ValueError:
            raise DatasetError(f"{spec}: option {key}={text!r} must be {_describe(declared[key])}") from None
    return out


__all__ = ["check_options", "convert", "declared_options"]
