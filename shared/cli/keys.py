"""`kiln keys`: manage API keys directly in the database (run where Kiln runs).

The database and Redis libraries are imported by these commands only, so that the `kiln`
commands that talk to the API over HTTP start without them (about a second less).
"""

from typing import Annotated

import typer

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.callback()
def _schema_ready() -> None:
    from shared import migrate

    migrate.upgrade()


@app.command()
def create(name: Annotated[str, typer.Option(help="Who or what the key is for.")]) -> None:
    """Create a key and print it (it is shown only once)."""
    from shared import crud
    from shared.db import open_session

    with open_session() as session:
        api_key, key = crud.create_api_key(session=session, name=name)
    typer.echo(f"id:  {api_key.id}", err=True)
    typer.echo(key)


@app.command("list")
def list_keys() -> None:
    """List keys (never the keys themselves)."""
    from shared import crud
    from shared.db import open_session

    with open_session() as session:
        for api_key in crud.list_api_keys(session=session):
            state = "revoked" if api_key.revoked_at else "active"
            role = "admin" if api_key.is_admin else "user"
            typer.echo(f"{api_key.id}\t{api_key.prefix}…\t{role}\t{state}\t{api_key.name}")


@app.command()
def revoke(key_id: str) -> None:
    """Revoke a key by id."""
    from shared import crud
    from shared.changes import Cached, announce
    from shared.db import open_session

    with open_session() as session:
        api_key = crud.revoke_api_key(session=session, key_id=key_id)
    if api_key is None:
        typer.echo(f"no key with id {key_id}", err=True)
        raise typer.Exit(1)
    announce(Cached.api_keys)
    typer.echo(f"revoked {key_id}")


@app.command()
def secret(
    key_id: str,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it with a new one.")] = False,
) -> None:
    """Print a key's webhook signing secret (`whsec_...`), or rotate it first."""
    from shared import crud
    from shared.changes import Cached, announce
    from shared.db import open_session
    from shared.models import ApiKey
    from shared.webhooks.signing import new_secret

    with open_session() as session:
        api_key = session.get(ApiKey, key_id)
        if api_key is None:
            typer.echo(f"no key with id {key_id}", err=True)
            raise typer.Exit(1)
        current = api_key.webhook_secret
        if rotate or current is None:
            current = crud.set_signing_secret(session=session, key_id=key_id, secret=new_secret())
            announce(Cached.api_keys)
    typer.echo(current)
