"""Fast positional constructors for the frozen dataclasses decoders build.

A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which made construction about half of NHRP decode
time (bench/RESULTS.md). Decoders have already checked every field, so they
build values through the slot descriptors directly; the result is an
ordinary, equal, immutable instance. Generated once per class at import, the
way :mod:`dataclasses` generates ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """``make(*field values in declaration order) -> cls`` without ``__init__``."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    o = _new(_cls)"]
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), namespace)  # generated from field names only
    make: Callable[..., T] = namespace["make"]
    return make


def fast_evolve(cls: type[T]) -> Callable[..., T]:
    """``evolve(obj, **changes) -> cls``: a copy of ``obj`` with ``changes``
    (keyword-only; an unknown name is a TypeError), like
    :func:`dataclasses.replace` without ``__init__``."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_keep": _KEEP}
    params = ", ".join(f"{name}=_keep" for name in names)
    lines = [f"def evolve(self, *, {params}):", "    o = _new(_cls)"]
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(o, self.{name} if {name} is _keep else {name})")
    lines.append("    return o")
    exec("\n".join(lines), namespace)  # generated from field names only
    evolve: Callable[..., T] = namespace["evolve"]
    return evolve


class _Keep:
    """The default of :func:`fast_evolve`'s keywords: the field as it is."""


_KEEP = _Keep()
