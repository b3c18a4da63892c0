"""Name -> factory registries (the timm ``create_model`` pattern).

Each registry is a plain dict. Registering a name twice is a programming error and raises;
asking for an unknown name is a user error whose message lists the valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from pretrain.errors import ConfigError, UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries that refuses duplicates and explains unknown names.

    Args:
        kind: what the entries are ("encoder", "head", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that stores ``obj`` under ``name``; raises ``KeyError`` on a duplicate."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Return the entry for ``name``; raise :class:`UserError` listing valid names if absent."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}"
            ) from None

    def check(self, name: str, key: str, extra: Iterable[str] = ()) -> None:
        """Raise :class:`ConfigError` naming config ``key`` and the valid names (plus ``extra``
        forms such as ``timm:<name>``) unless ``name`` is registered."""
        if name not in self._entries:
            valid = ", ".join([*self.names(), *extra])
            raise ConfigError(f"{key}: unknown {self.kind} {name!r}; valid: {valid}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
