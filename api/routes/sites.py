"""What the local publisher publishes, open to anyone without a key: its repositories over git's
dumb HTTP protocol and its static sites."""

import mimetypes
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse, RedirectResponse

from shared.config import get_settings
from shared.exceptions import NotFound
from shared.publish.local import SITES_DIR, repo_dir, site_dir, valid_name
from shared.schemas import ErrorResponse

INDEX = "index.html"  # what a directory of a site serves
# The files a dumb-protocol clone or fetch reads (SHA-1 repositories, git's default); the rest of
# a bare repository (config, hooks, logs) stays private.
_GIT_FILES = re.compile(
    r"HEAD|info/refs|objects/info/packs"
    r"|objects/[0-9a-f]{2}/[0-9a-f]{38}|objects/pack/pack-[0-9a-f]{40}\.(?:idx|pack)"
)
_GIT_TEXT = frozenset({"HEAD", "info/refs", "objects/info/packs"})  # they change; objects never
# Types that Python's table lacks or gives differently depending on the host's mime.types.
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}

router = APIRouter(tags=["sites"])


def sites_root() -> Path:
    """Where the local publisher keeps its repositories and sites."""
    return get_settings().data_dir / SITES_DIR


SitesRootDep = Annotated[Path, Depends(sites_root)]


@router.get("/git/{name}.git/{path:path}", responses=_NOT_FOUND)
@router.head("/git/{name}.git/{path:path}", include_in_schema=False)
def git_file(name: str, path: str, root: SitesRootDep) -> FileResponse:
    """A file of a published repository, for `git clone` over the dumb HTTP protocol."""
    if not valid_name(name) or not _GIT_FILES.fullmatch(path):
        raise NotFound("no such repository file")
    file = _inside(_existing(repo_dir(root, name)), path)
    if not file.is_file():
        raise NotFound("no such repository file")
    text = path in _GIT_TEXT
    return FileResponse(
        file,
        media_type="text/plain" if text else "application/octet-stream",
        headers={"Cache-Control": "no-cache" if text else "public, max-age=31536000, immutable"},
    )


@router.get("/pages/{name}", status_code=307, responses=_NOT_FOUND)
@router.head("/pages/{name}", include_in_schema=False)
def site_home(name: str, root: SitesRootDep) -> RedirectResponse:
    """A site's address without its trailing slash: redirect, so its relative links work."""
    _site(root, name)
    return _with_slash(name)


@router.get("/pages/{name}/{path:path}", responses=_NOT_FOUND)
@router.head("/pages/{name}/{path:path}", include_in_schema=False)
def site_file(name: str, path: str, root: SitesRootDep) -> Response:
    """A file of a published site; a directory serves its `index.html`."""
    target = _inside(_site(root, name), path)
    if target.is_dir():
        if path and not path.endswith("/"):
            return _with_slash(path.rpartition("/")[2])
        target = target / INDEX
    if not target.is_file():
        raise NotFound("no such page")
    return FileResponse(
        target,
        media_type=_TYPES.get(target.suffix.lower())
        or mimetypes.guess_type(target.name)[0]
        or "application/octet-stream",
        # Revalidate, so a new round shows at once; never let a browser guess a type.
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def _site(root: Path, name: str) -> Path:
    """The directory the site `name` serves from: the export its symlink points at."""
    if not valid_name(name):
        raise NotFound("no such site")
    return _existing(site_dir(root, name))


def _existing(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # missing, or a symlink loop
        raise NotFound("no such site or repository") from exc


def _inside(base: Path, path: str) -> Path:
    """`path` under the resolved dir `base`; NotFound if it is absolute or could leave `base`."""
    if path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise NotFound("no such file")
    try:
        target = (base / path).resolve()
    except (OSError, RuntimeError) as exc:
        raise NotFound("no such file") from exc
    if not target.is_relative_to(base):
        raise NotFound("no such file")
    return target


def _with_slash(segment: str) -> RedirectResponse:
    # Relative to the request's own URL, so it holds behind any proxy or path prefix.
    return RedirectResponse(f"./{quote(segment)}/", status_code=307)
