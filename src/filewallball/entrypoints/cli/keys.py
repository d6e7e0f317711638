"""`filewallball keys`: create, list and revoke API keys directly in the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from filewallball.domain.access import AccessService
from filewallball.domain.models import MAX_STORED_INT
from filewallball.domain.security import ApiKey, Principal, Role
from filewallball.entrypoints.cli.startup import guarded, settings_or_exit

T = TypeVar("T")


keys = typer.Typer(help="Manage API keys directly in the database.", no_args_is_help=True)


def _run_with_access(work: Callable[[AccessService], Awaitable[T]]) -> T:
    """Run `work` against the configured database, as the operator (every permission)."""
    from filewallball.adapters.sql import upgrade
    from filewallball.container import build_container, close_resources, open_resources
    from filewallball.entrypoints.logs import configure_logging

    settings = settings_or_exit()
    configure_logging("warning")

    async def run() -> T:
        container = build_container(settings)
        await open_resources(container)
        try:
            return await work(container.access_service())
        finally:
            await close_resources(container)

    def migrate_and_run() -> T:
        if settings.migrate_at_start:
            upgrade(settings.resolved_database_url)
        return asyncio.run(run())

    return guarded(migrate_and_run, settings=settings)


def _key_line(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else "active"
    expires = key.expires_at.isoformat() if key.expires_at else "never"
    used = key.last_used_at.isoformat() if key.last_used_at else "never"
    return f"{key.id}\t{key.name}\t{key.role}\t{key.owner}\t{state}\texpires={expires}\tused={used}"


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for")],
    role: Annotated[Role, typer.Option(help="admin, uploader or reader")] = Role.UPLOADER,
    owner: Annotated[
        str | None, typer.Option(help="Whose files it sees; default: the name")
    ] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="ISO date-time (UTC if no zone)")
    ] = None,
    cidr: Annotated[list[str] | None, typer.Option(help="Allowed network; repeat for more")] = None,
    quota_bytes: Annotated[
        int | None,
        typer.Option(
            min=0, max=MAX_STORED_INT, help="Bytes its owner may store; default: the role's"
        ),
    ] = None,
    quota_files: Annotated[
        int | None,
        typer.Option(
            min=0, max=MAX_STORED_INT, help="Files its owner may store; default: the role's"
        ),
    ] = None,
) -> None:
    """Create a key and print its secret (shown this once)."""
    expiry = (
        expires_at.replace(tzinfo=UTC) if expires_at and expires_at.tzinfo is None else expires_at
    )
    key, secret = _run_with_access(
        lambda access: access.create_key(
            Principal.system("cli"),
            name=name,
            role=role,
            owner=owner,
            expires_at=expiry,
            allowed_cidrs=tuple(cidr or ()),
            quota_bytes=quota_bytes,
            quota_files=quota_files,
        )
    )
    typer.echo(_key_line(key), err=True)
    typer.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    for key in _run_with_access(
        lambda access: access.list_keys(Principal.system("cli"), limit=10_000, after=None)
    ):
        typer.echo(_key_line(key))


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (fwb_<id>_...)")]) -> None:
    """Revoke a key at once."""
    key = _run_with_access(lambda access: access.revoke_key(Principal.system("cli"), key_id))
    typer.echo(_key_line(key))
