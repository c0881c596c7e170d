"""Multi-valued query parameters: repeated (``kind=a&kind=b``) or comma-separated (``kind=a,b``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from api.deps import catalog_kind, check_district
from api.errors import BadRequest

# A filter list longer than this is a mistake or an attack, not a dashboard.
MAX_VALUES = 200


def split_values(raw: Sequence[str] | None, *, name: str = "parameter") -> tuple[str, ...]:
    """The distinct non-empty values, in the order given; BadRequest past MAX_VALUES."""
    if not raw:
        return ()
    seen: dict[str, None] = {}
    for item in raw:
        for value in item.split(","):
            value = value.strip()
            if value:
                seen[value] = None
    if len(seen) > MAX_VALUES:
        raise BadRequest(f"{name}: at most {MAX_VALUES} values", code="too_many_values")
    return tuple(seen)


def _checked(raw: Sequence[str] | None, name: str, check: Callable[[str], object]) -> tuple[str, ...]:
    values = split_values(raw, name=name)
    for value in values:
        check(value)
    return values


def districts(raw: Sequence[str] | None) -> tuple[str, ...]:
    """Catalog district slugs (BadRequest ``unknown_district`` otherwise)."""
    return _checked(raw, "district", check_district)


def kinds(raw: Sequence[str] | None) -> tuple[str, ...]:
    """Catalog kind names (BadRequest ``unknown_kind`` otherwise)."""
    return _checked(raw, "kind", catalog_kind)
