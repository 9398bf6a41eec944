"""Dependencies that routes declare: the DB session, the settings, the caller's API key.

The ones that do no I/O are `async def`, so FastAPI runs them on the event loop instead of
handing each to a worker thread; the key lookup takes one short session of its own, so no
request holds a database connection while it waits for a thread.
"""

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api import limits
from shared import crud
from shared.config import Settings, get_settings
from shared.db import get_session, open_session
from shared.exceptions import Forbidden, Unauthorized
from shared.models import ApiKey

SessionDep = Annotated[Session, Depends(get_session)]


async def settings() -> Settings:
    """The process's settings."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings)]


def _active_key(key: str) -> ApiKey | None:
    with open_session() as session:
        return crud.get_active_key(session=session, key=key)


def _checked_key(key: str, client: str, settings: Settings) -> ApiKey | None:
    """The active key, after the client's bad-key budget allows a look-up; a miss is counted."""
    limits.refuse_guessing(client=client)
    api_key = _active_key(key)
    if api_key is None:
        limits.count_bad_key(settings=settings, client=client)
    return api_key


async def authenticate(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> ApiKey:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key`; 401 if none is valid,
    429 once the client's address sent too many invalid keys this minute."""
    key = x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            key = credentials.strip()
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    client = request.client.host if request.client else "unknown"
    api_key = await run_in_threadpool(_checked_key, key, client, settings)
    if api_key is None:
        raise Unauthorized("the API key is invalid or revoked")
    return api_key


KeyDep = Annotated[ApiKey, Depends(authenticate)]


async def require_admin(api_key: KeyDep) -> ApiKey:
    """The caller's key, which must be the admin's."""
    if not api_key.is_admin:
        raise Forbidden("only the admin key may do this")
    return api_key


AdminDep = Annotated[ApiKey, Depends(require_admin)]


async def base_url(request: Request, settings: SettingsDep) -> str:
    """Where clients reach this API: KILN_PUBLIC_URL, or the URL of the request."""
    return settings.public_url or str(request.base_url)


BaseURLDep = Annotated[str, Depends(base_url)]
