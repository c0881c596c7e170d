"""/admin/keys: create, list and revoke API keys (every route here needs scope ``admin``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from api import keys
from api.auth import key_verifier
from api.deps import Conn
from api.errors import NotFound
from api.keys import Scope
from api.models import ErrorBody

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown key"},
    422: {"model": ErrorBody, "description": "invalid body or parameter"},
    503: {"model": ErrorBody, "description": "database unavailable"},
}

router = APIRouter(prefix="/admin", tags=["admin"], responses=_ERRORS)

# Printable, no control characters (PostgreSQL text refuses NUL; logs should not get newlines).
_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=_NAME_PATTERN, examples=["dashboard"])
    scope: Scope = Field(description="read, write or admin; each includes the ones before it")


class KeyInfo(BaseModel):
    key_id: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="exact to within the key cache time (10 s)")


class CreatedKeyInfo(KeyInfo):
    token: str = Field(description="the only time the token is shown; store it now")


class KeyList(BaseModel):
    items: list[KeyInfo]


def _info(key: keys.ApiKey) -> KeyInfo:
    return KeyInfo(
        key_id=key.key_id,
        name=key.name,
        scopes=list(key.scopes),
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


KeyId = Annotated[str, Path(description="key id (the 12 hex digits after cn_)", examples=["0f1e2d3c4b5a"])]


@router.post("/keys", status_code=201, response_model=CreatedKeyInfo, summary="Create an API key")
async def create_key(conn: Conn, body: KeyRequest) -> CreatedKeyInfo:
    """The new key with its token; the token is not stored and cannot be shown again."""
    created = await keys.create_key(conn, body.name, [body.scope])
    return CreatedKeyInfo(**_info(created.key).model_dump(), token=created.token)


@router.get("/keys", response_model=KeyList, summary="List API keys (never secrets)")
async def list_keys(conn: Conn) -> KeyList:
    return KeyList(items=[_info(key) for key in await keys.list_keys(conn)])


@router.delete("/keys/{key_id}", response_model=KeyInfo, summary="Revoke an API key")
async def revoke_key(conn: Conn, request: Request, key_id: KeyId) -> KeyInfo:
    """Revoked at once on this API worker, within the key cache time (10 s) on the others."""
    revoked = await keys.revoke_key(conn, key_id)
    if revoked is None:
        raise NotFound(f"unknown API key {key_id!r}", code="key_not_found")
    key_verifier(request.app).forget(key_id)
    return _info(revoked)
