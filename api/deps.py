"""Dependencies that routes declare: the DB session, the settings, the caller's API key."""

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlmodel import Session

from shared import crud
from shared.config import Settings, get_settings
from shared.db import get_session
from shared.exceptions import Forbidden, Unauthorized
from shared.models import ApiKey

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def authenticate(
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> ApiKey:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key`; 401 if none is valid."""
    key = x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            key = credentials.strip()
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    api_key = crud.get_active_key(session=session, key=key)
    if api_key is None:
        raise Unauthorized("the API key is invalid or revoked")
    return api_key


KeyDep = Annotated[ApiKey, Depends(authenticate)]


def require_admin(api_key: KeyDep) -> ApiKey:
    """The caller's key, which must be the admin's."""
    if not api_key.is_admin:
        raise Forbidden("only the admin key may do this")
    return api_key


AdminDep = Annotated[ApiKey, Depends(require_admin)]


def base_url(request: Request, settings: SettingsDep) -> str:
    """Where clients reach this API: KILN_PUBLIC_URL, or the URL of the request."""
    return settings.public_url or str(request.base_url)


BaseURLDep = Annotated[str, Depends(base_url)]
