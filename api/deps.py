"""Dependencies that routes declare: the DB session, the settings, the caller's API key.

The ones that do no I/O are `async def`, so FastAPI runs them on the event loop instead of
handing each to a worker thread. A key this process has seen is served from its cache
(`api.local_cache`), with no thread hop; a lookup takes one short session of its own, so no
request holds a database connection while it waits for a thread.
"""

from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api import limits
from api.local_cache import LocalCache
from shared import crud
from shared.changes import Cached
from shared.config import Settings, get_settings
from shared.db import get_session, open_session
from shared.exceptions import Forbidden, Unauthorized
from shared.models import ApiKey

SessionDep = Annotated[Session, Depends(get_session)]

API_KEYS = LocalCache[ApiKey](Cached.api_keys)
"""Active keys by the hash of their secret."""


async def settings() -> Settings:
    """The process's settings."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings)]


def active_key(key: str) -> ApiKey | None:
    """The API key, if it exists and is not revoked (from this process's cache when it can)."""

    def read() -> ApiKey | None:
        with open_session() as session:
            return crud.get_active_key(session=session, key=key)

    return API_KEYS.load(crud.hash_key(key), read)


def _checked_key(key: str, client: str, settings: Settings) -> ApiKey | None:
    """The active key; a miss is counted against the client's bad-key budget."""
    api_key = active_key(key)
    if api_key is None:
        limits.count_bad_key(settings=settings, client=client)
    return api_key


async def authenticate(request: Request, settings: SettingsDep) -> ApiKey:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key`; 401 if none is valid,
    429 once the client's address sent too many invalid keys this minute."""
    # Read from the headers directly: declared Header() parameters cost a validation each.
    key = request.headers.get("x-api-key")
    if authorization := request.headers.get("authorization"):
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            key = credentials.strip()
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    client = request.client.host if request.client else "unknown"
    limits.refuse_guessing(client=client)
    # A cached key needs no database, hence no worker thread.
    api_key = API_KEYS.get(crud.hash_key(key))
    if api_key is None:
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
