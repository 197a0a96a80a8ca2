"""Whether a config value (what YAML and the command line give: int, float, bool, str, None, lists,
mappings) fits a Python type annotation, and the annotation in words.

`conforms(value, annotation)` is True, False, or None when the annotation cannot tell (a class a
constructor may build from a number, a type variable, `Any`). A string or a boolean is never an
instance of another class, so `lr: float | Tensor` refuses `"abc"`; a mapping with `_target_` is an
object Hydra builds and fits any annotation. `describe` names the types a config value can have:
`trainer.max_epochs` (`int | None`) "an integer or null".
"""

import collections.abc
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


def conforms(value: Any, annotation: Any) -> bool | None:
    """Whether a config value fits a type annotation; None when the annotation cannot tell."""
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, typing.TypeVar | str):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        answers = [conforms(value, a) for a in args]
        return True if True in answers else (None if None in answers else False)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if isinstance(value, dict) and "_target_" in value:
        return None  # an object Hydra builds
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (Path, os.PathLike) or (inspect.isclass(annotation) and issubclass(annotation, os.PathLike)):
        return isinstance(value, str)
    container = origin if origin is not None else annotation
    if container in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection):
        if not isinstance(value, list | tuple):
            return None if value is not None and not isinstance(value, str | int | float | bool) else False
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            answers = [conforms(v, a) for v, a in zip(value, args)]
        else:
            answers = [conforms(v, args[0]) for v in value] if args else []
        return False if False in answers else (None if None in answers else True)
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return isinstance(value, dict) or (None if value is not None and not isinstance(value, str | int | float | bool) else False)
    if inspect.isclass(annotation):
        if isinstance(value, str | bool):
            return isinstance(value, annotation)  # a class other than str / bool never is one
        return None  # a number or a list may be what a constructor turns into one
    return None


def describe(annotation: Any) -> str:
    """What a value of `annotation` is, in words: the types a config value can have (literals merged)."""
    members = _members(annotation)
    literals = [repr(m) for m in members if not isinstance(m, type) and typing.get_origin(m) is None and m is not None]
    words = [_word(m) for m in members if isinstance(m, type) or typing.get_origin(m) is not None]
    words = [w for w in dict.fromkeys(words) if w is not None]
    if literals:
        words.insert(0, "one of " + ", ".join(literals))
    if None in members:
        words.append("null")
    return " or ".join(words) or str(annotation)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (nested unions flattened), each literal's values, `None` for NoneType."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    if origin is Literal:
        return list(typing.get_args(annotation))
    return [None if annotation is type(None) else annotation]


def _word(annotation: Any) -> str | None:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    if annotation in names:
        return names[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        inner = describe(args[0]) if args and args[-1] is not Ellipsis else None
        return f"a list of {inner}" if inner else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return None  # a class a config value is not (a Tensor, an Accelerator): no alternative to name
