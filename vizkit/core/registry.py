"""Specs registered once by name, in order (timm's ``_registry.py``): models, methods, extractors."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Specs by their ``name`` attribute, in registration order.

    A name is registered once; looking up a wrong name is a ``ValueError`` that lists the valid ones.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, spec: T) -> T:
        """Adds ``spec`` under ``spec.name``; a name already taken is an error."""
        name = spec.name  # type: ignore[attr-defined]
        if name in self:
            raise ValueError(f"{self.kind.capitalize()} {name!r} is already registered.")
        self[name] = spec
        return spec

    def lookup(self, name: str) -> T:
        """The spec of ``name``; a wrong name lists the valid ones."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"Unknown {self.kind} {name!r}. Available: {', '.join(self)}.") from None
