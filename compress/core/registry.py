"""One small registry type for KD losses, quantization modes, exporters and runtimes."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compress.core.errors import KdtoolError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the names users write to implementations.

    Example::

        LOSSES = Registry("KD loss")

        @LOSSES.register("hinton")
        class HintonKD: ...

        LOSSES.get("hinton")   # unknown names raise a KdtoolError listing the known ones
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        """Decorator adding an item under `name` (first docstring line is its description)."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            text = doc or (getattr(item, "__doc__", None) or "").strip()
            self._docs[name] = text.splitlines()[0] if text else ""
            return item

        return add

    def get(self, name: str) -> T:
        """Return the item called `name`, or raise naming the close matches and all known names."""
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise KdtoolError(f"unknown {self.kind} {name!r}", f"{hint}known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def describe(self) -> dict[str, str]:
        """Name → one-line description, for `kdtool ls`."""
        return dict(sorted(self._docs.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
