"""A password that cannot leak through ``repr``, ``str``, logging or tracebacks."""

from __future__ import annotations

from typing import Final

MASK: Final = "******"


class Secret:
    """Holds a password; only ``reveal()`` gives it back.

    Everything that formats objects (logging, f-strings, exception messages,
    dataclass reprs) sees ``******``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The password itself: only for hashing it or handing it to a client library."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the password to wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")
