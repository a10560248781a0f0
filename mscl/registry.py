"""Name -> class tables of the parts a config names by string: datasets (``data.name``) and models (``model.name``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """The classes of one kind of part under their names, in the order given.

    An entry is the class itself or ``"module:attribute"``, imported on the first lookup (so listing the names
    imports nothing). ``registry.lookup(name)`` returns the class, or raises ValueError with one line naming the
    unknown name and every available one, e.g. ``unknown model 'segformer'; available models: tiny, deeplabv3, ...``.
    """

    def __init__(self, kind: str, entries: Mapping[str, T | str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def lookup(self, name: str) -> T:
        """The class registered as ``name``; ValueError listing the available names when there is none."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(import_module(module), attribute)
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
