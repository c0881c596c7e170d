"""``cityneuron apikey create|list|revoke``: manage API keys directly in the database.

This is how the first admin key is made; after that, /admin/keys does the same over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from api import keys
from api.db import AsyncConn
from api.keys import Scope
from cityneuron import localstack
from cityneuron.errors import CityNeuronError
from cityneuron.settings import DatabaseSettings, Settings

_T = TypeVar("_T")


class KeyCommandError(CityNeuronError):
    """The key command could not run (database unreachable, unknown key)."""


def add_parser(commands: Any) -> None:
    """Add ``apikey`` and its subcommands to the ``cityneuron`` parser."""
    apikey = commands.add_parser("apikey", help="create, list and revoke API keys")
    # Run next to `cityneuron up`, it finds the stack's database (cityneuron/localstack.py).
    apikey.set_defaults(handler=run, local_stack=True)
    sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = sub.add_parser("create", help="create a key and print its token (shown only once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.READ.value)
    listing = sub.add_parser("list", help="list keys (never secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    revoke = sub.add_parser("revoke", help="revoke a key (API workers drop it within 10 s)")
    revoke.add_argument("key_id")
    for parser in (create, listing, revoke):
        parser.add_argument(
            "--database-url", dest="database__url", help="postgresql:// URL (default: the local stack's)"
        )
        parser.add_argument(
            "--home", dest="stack__home", type=Path, help="local stack's folder (default ./.cityneuron)"
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Handler of ``cityneuron apikey``."""
    if args.apikey_command == "create":
        created = _with_connection(settings, lambda c: keys.create_key(c, args.name, [Scope(args.scope)]))
        print(f"key_id: {created.key.key_id}  name: {created.key.name}  scope: {args.scope}")
        print("token (shown only now; store it):")
        print(created.token)
        return 0
    if args.apikey_command == "list":
        for key in _with_connection(settings, keys.list_keys):
            if args.json:
                print(json.dumps(_as_dict(key)))
            else:
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
                print(f"{key.key_id}  {','.join(key.scopes):6}  {state:24}  last used {used:16}  {key.name}")
        return 0
    revoked = _with_connection(settings, lambda c: keys.revoke_key(c, args.key_id))
    if revoked is None:
        raise KeyCommandError(f"no API key {args.key_id!r}")
    print(f"revoked {revoked.key_id} ({revoked.name})")
    return 0


def _as_dict(key: keys.ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def _with_connection(settings: Settings, work: Callable[[AsyncConn], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        db = settings.database
        try:
            conn = await psycopg.AsyncConnection.connect(
                db.url, autocommit=True, connect_timeout=max(1, round(db.connect_timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise KeyCommandError(
                f"database unreachable: {str(exc).strip().splitlines()[0]}{_no_stack_hint(settings)}"
            ) from exc
        async with conn:
            try:
                return await work(conn)
            except psycopg.Error as exc:
                raise KeyCommandError(f"database error: {str(exc).strip().splitlines()[0]}") from exc

    return asyncio.run(main())


def _no_stack_hint(settings: Settings) -> str:
    """Why the default database was tried: no local stack here, and no URL given."""
    home = settings.stack.home.resolve()
    if settings.database.url != DatabaseSettings().url or localstack.read(home) is not None:
        return ""
    return f" (no local stack in {home}: start one with ./scripts/run.sh, or give --database-url)"
