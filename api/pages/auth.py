"""Signing in to the pages: the API key in an HttpOnly, SameSite=Strict cookie.

Only the pages read the cookie; the API itself takes keys from headers alone, so a cookie can
never be used to call it from another site.
"""

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Cookie, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import active_key
from shared.config import Settings
from shared.exceptions import Forbidden
from shared.models import ApiKey

COOKIE = "kiln_key"
COOKIE_MAX_AGE_S = 8 * 3600  # a working day; then the key is asked for again


async def cookie_key(kiln_key: Annotated[str | None, Cookie()] = None) -> ApiKey | None:
    """The valid key in the cookie, or None when there is none."""
    if not kiln_key:
        return None
    return await run_in_threadpool(active_key, kiln_key)


PageKeyDep = Annotated[ApiKey | None, Depends(cookie_key)]


def _is_https(request: Request, settings: Settings) -> bool:
    return request.url.scheme == "https" or (settings.public_url or "").startswith("https://")


def sign_in(response: Response, request: Request, settings: Settings, key: str) -> None:
    """Keep the key in the cookie (Secure when Kiln is reached over https)."""
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=_is_https(request, settings),
    )


def sign_out(response: Response, request: Request, settings: Settings) -> None:
    """Forget the cookie."""
    response.delete_cookie(
        COOKIE, httponly=True, samesite="strict", secure=_is_https(request, settings)
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def require_same_origin(request: Request, settings: Settings) -> None:
    """Refuse a form posted from another site (a browser sends `Origin` with every POST)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = {_origin(str(request.base_url))}
    if settings.public_url:
        allowed.add(_origin(settings.public_url))
    if origin not in allowed:
        raise Forbidden("the form was posted from another site")
