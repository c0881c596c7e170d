"""JSON payload parsing that tells non-finite numbers (NaN, Infinity, 1e999) from broken JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from cityneuron.errors import ContractError, Reason


def _non_finite_numbers(payload: bytes) -> list[str]:
    """The non-finite numbers of a payload that is valid JSON apart from them; [] when it is not."""
    found: list[str] = []

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            found.append(text[:40])
        return value

    def constant(text: str) -> float:
        found.append(text)
        return float(text)

    try:
        json.loads(
            payload,
            parse_constant=constant,
            parse_float=number,
            parse_int=lambda text: int(text) if len(text) < 300 else number(text),
        )
    except (ValueError, RecursionError):
        return []
    return found


def loads(payload: bytes) -> Any:
    """Parse JSON like the contract does, but tell non-finite numbers from broken JSON.

    orjson refuses NaN and Infinity (not JSON) and numbers that overflow a double, so those reach
    us as a parse error; the standard library parser, whose hooks see every such number, finds out
    whether that is all that is wrong with the payload (the slow path runs for bad payloads only).
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        non_finite = _non_finite_numbers(payload)
        if non_finite:
            raise ContractError(
                Reason.NON_FINITE, f"non-finite numbers: {', '.join(non_finite[:5])}"
            ) from None
        raise ContractError(Reason.MALFORMED_JSON, str(exc)[:200]) from exc


def telemetry_items(payload: bytes) -> list[Any]:
    # contract.decode_telemetry with this module's loads (non-finite numbers told apart).
    body = loads(payload)
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        if not body:
            raise ContractError(Reason.BAD_SHAPE, "empty reading array")
        return body
    raise ContractError(Reason.BAD_SHAPE, f"payload must be an object or an array, not {type(body).__name__}")
