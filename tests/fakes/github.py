"""A fake GitHub REST API (repos, Git Data, contents, Pages) over loopback, for tests; it also
serves each Pages site it builds.

Run it in-process (`with FakeGitHub() as fake: fake.url`) or as its own process:
`python -m tests.fakes.github --port N [--token T] [--login L]`.
"""

import argparse
import base64
import binascii
import hashlib
import itertools
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

DOCS = "https://docs.github.com/rest"
DEFAULT_TOKEN = "ghp_test"
DEFAULT_LOGIN = "kiln-bot"
RATE_LIMIT = 5000  # a token's requests per hour
API_VERSIONS = frozenset({"2022-11-28"})
EMPTY_REPOSITORY = "Git Repository is empty."
PRIMARY_LIMIT_DOCS = f"{DOCS}/overview/rate-limits-for-the-rest-api#about-primary-rate-limits"
SECONDARY_LIMIT_DOCS = f"{DOCS}/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID {request_id}."
)
FILE_MODES = frozenset({"100644", "100755", "120000"})
REPO = r"/repos/(?P<o>[^/]+)/(?P<r>[^/]+)"  # the start of every repository path
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")

Handler = Callable[..., Awaitable[Response]]


class _Refused(Exception):
    """Ends a request with GitHub's error shape: a status and a `message`."""

    def __init__(self, status_code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"message": message, "documentation_url": DOCS, **extra}


@dataclass(frozen=True)
class Blob:
    data: bytes


@dataclass(frozen=True)
class TreeEntry:
    mode: str  # as the API shows it: "100644", "040000"…
    type: str  # blob, tree or commit
    sha: str
    name: str


@dataclass(frozen=True)
class Tree:
    entries: tuple[TreeEntry, ...]


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    message: str
    author: dict[str, str]
    committer: dict[str, str]


GitObject = Blob | Tree | Commit


@dataclass
class Build:
    """One Pages build: `building` for a number of polls, then `built` (or `errored`)."""

    commit: str
    polls_left: int
    created_at: str
    status: str = "queued"
    error: str | None = None


@dataclass
class Pages:
    """A repository's Pages site and the files it serves (those of its last good build)."""

    html_url: str
    branch: str
    path: str
    builds: list[Build] = field(default_factory=list)
    site: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Repository:
    """One repository's state: its Git objects, refs and Pages site."""

    id: int
    owner: str
    owner_type: str  # User or Organization
    name: str
    private: bool
    description: str | None
    created_at: str
    default_branch: str = "main"
    objects: dict[str, GitObject] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "heads/main" -> commit sha
    pages: Pages | None = None
    pushed_at: str | None = None

    @property
    def head(self) -> str | None:
        """The default branch's head commit, None while the repository is empty."""
        return self.refs.get(f"heads/{self.default_branch}")

    def commit(self, sha: str) -> Commit:
        found = self.objects[sha]
        assert isinstance(found, Commit), sha
        return found

    def parents(self, sha: str) -> list[str]:
        return list(self.commit(sha).parents)

    def history(self, sha: str | None = None) -> list[str]:
        """Commits reachable from `sha` (default: the head), newest first."""
        start = sha or self.head
        seen: list[str] = []
        todo = [start] if start else []
        while todo:
            current = todo.pop(0)
            if current not in seen:
                seen.append(current)
                todo.extend(self.commit(current).parents)
        return seen

    def files(self, sha: str | None = None) -> dict[str, bytes]:
        """`{path: content}` of a commit (default: the head)."""
        commit = sha or self.head
        if commit is None:
            return {}
        return {
            path: blob.data
            for path, entry in self.tree_files(self.commit(commit).tree).items()
            if isinstance(blob := self.objects[entry.sha], Blob)
        }

    def tree_files(self, tree_sha: str, prefix: str = "") -> dict[str, TreeEntry]:
        """`{path: entry}` of every file under a tree, at any depth."""
        tree = self.objects[tree_sha]
        assert isinstance(tree, Tree), tree_sha
        flat: dict[str, TreeEntry] = {}
        for entry in tree.entries:
            path = prefix + entry.name
            if entry.type == "tree":
                flat.update(self.tree_files(entry.sha, path + "/"))
            else:
                flat[path] = entry
        return flat


class FakeGitHub(LoopbackServer):
    """A GitHub look-alike for one token and its user; knobs are plain attributes, read on every
    request."""

    label = "FakeGitHub"

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        login: str = DEFAULT_LOGIN,
        *,
        orgs: Iterable[str] = ("kiln-apps",),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.login = login
        self.user_id = 1001
        self.orgs = {org.lower(): org for org in orgs}
        self.repos: dict[tuple[str, str], Repository] = {}  # (owner, name), lower-cased
        self._ids = itertools.count(1)
        self._window_reset = int(time.time()) + 3600
        self._used = 0
        self.reset()

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])
        super().__init__(app, host=host, port=port)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", r"/user", self._user),
            ("GET", r"/rate_limit", self._rate_limit),
            ("POST", r"/user/repos", self._create_user_repo),
            ("POST", r"/orgs/(?P<org>[^/]+)/repos", self._create_org_repo),
            ("GET", REPO, self._get_repo),
            ("POST", rf"{REPO}/git/blobs", self._create_blob),
            ("GET", rf"{REPO}/git/blobs/(?P<sha>\w+)", self._blob),
            ("POST", rf"{REPO}/git/trees", self._create_tree),
            ("GET", rf"{REPO}/git/trees/(?P<sha>.+)", self._tree),
            ("POST", rf"{REPO}/git/commits", self._create_commit),
            ("GET", rf"{REPO}/git/commits/(?P<sha>\w+)", self._commit),
            ("GET", rf"{REPO}/git/ref/(?P<ref>.+)", self._ref),
            ("POST", rf"{REPO}/git/refs", self._create_ref),
            ("PATCH", rf"{REPO}/git/refs/(?P<ref>.+)", self._move_ref),
            ("GET", rf"{REPO}/contents/?(?P<path>.*)", self._contents),
            ("PUT", rf"{REPO}/contents/(?P<path>.+)", self._put_file),
            ("GET", rf"{REPO}/pages", self._pages),
            ("POST", rf"{REPO}/pages", self._enable_pages),
            ("POST", rf"{REPO}/pages/builds", self._request_build),
            ("GET", rf"{REPO}/pages/builds/latest", self._latest),
        ]
        self._routes = [
            (method, re.compile(pattern), handler) for method, pattern, handler in routes
        ]

    def reset(self) -> None:
        """Put every knob back and forget past requests; repositories stay."""
        self.rate_limit_next = 0  # the next N API requests hit the primary rate limit (403)
        self.rate_limit_reset_in = 1  # seconds from then until that limit's reset
        self.secondary_limit_next = 0  # the next N API requests hit a secondary limit (403)
        self.secondary_retry_after = 1  # the `retry-after` (seconds) those answers carry
        self.fail_next = 0  # the next N API requests answer 502
        # The next N Git Data requests answer 409 as if a new repository's auto_init commit had
        # not landed yet, which GitHub does for a moment after creating one.
        self.empty_next = 0
        self.builds_before_built = 1  # polls of a new build that still answer `building`
        self.build_error: str | None = None  # set: builds end `errored` with this message
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order

    def repo(self, owner: str, name: str) -> Repository | None:
        """A repository's state, for tests to inspect."""
        return self.repos.get((owner.lower(), name.lower()))

    def create_repo(
        self, owner: str, name: str, *, auto_init: bool = True, private: bool = False
    ) -> Repository:
        """Make a repository as its owner would on github.com (for tests to set the scene)."""
        owner_type = "User" if owner.lower() == self.login.lower() else "Organization"
        canonical = self.login if owner_type == "User" else self.orgs.get(owner.lower(), owner)
        repo = Repository(
            id=next(self._ids),
            owner=canonical,
            owner_type=owner_type,
            name=_NOT_IN_NAME.sub("-", name),  # GitHub renames rather than refuses
            private=private,
            description=None,
            created_at=_now(),
        )
        self.repos[(canonical.lower(), repo.name.lower())] = repo
        if auto_init:
            readme = self._store(repo, Blob(f"# {repo.name}\n".encode()))
            tree = self._store(repo, Tree((TreeEntry("100644", "blob", readme, "README.md"),)))
            commit = self._store(repo, self._new_commit(tree, (), "Initial commit"))
            repo.refs[f"heads/{repo.default_branch}"] = commit
            repo.pushed_at = _now()
        return repo

    async def _dispatch(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path))
        if path.startswith("/pages-site/"):
            return self._serve_site(path.removeprefix("/pages-site/"))
        request_id = secrets.token_hex(8).upper()
        headers = {
            "x-github-request-id": request_id,
            "x-github-media-type": "github.v3; format=json",
            **self._count_request(),
        }
        if self.fail_next > 0:
            self.fail_next -= 1
            return JSONResponse({"message": "Server Error"}, status_code=502, headers=headers)
        try:
            self._authenticate(request)
            if self.rate_limit_next > 0:
                self.rate_limit_next -= 1
                reset = int(time.time()) + self.rate_limit_reset_in
                headers["x-ratelimit-remaining"] = "0"
                headers["x-ratelimit-used"] = str(RATE_LIMIT)
                headers["x-ratelimit-reset"] = str(reset)
                message = f"API rate limit exceeded for user ID {self.user_id}."
                raise _Refused(403, message, documentation_url=PRIMARY_LIMIT_DOCS)
            if self.secondary_limit_next > 0:
                self.secondary_limit_next -= 1
                headers["retry-after"] = str(self.secondary_retry_after)
                message = SECONDARY_LIMIT_MESSAGE.format(request_id=request_id)
                raise _Refused(403, message, documentation_url=SECONDARY_LIMIT_DOCS)
            for method, pattern, handler in self._routes:
                if method == request.method and (match := pattern.fullmatch(path)):
                    response = await handler(request, **match.groupdict())
                    break
            else:
                raise _Refused(404, "Not Found")
        except _Refused as refused:
            response = JSONResponse(refused.body, status_code=refused.status_code)
        response.headers.update(headers)
        return response

    def _authenticate(self, request: Request) -> None:
        version = request.headers.get("x-github-api-version")
        if version is not None and version not in API_VERSIONS:
            raise _Refused(400, f"API version {version} is not supported.")
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if not credential:
            raise _Refused(401, "Requires authentication")
        if scheme.lower() not in ("bearer", "token") or credential != self.token:
            raise _Refused(401, "Bad credentials", status="401")

    def _count_request(self) -> dict[str, str]:
        now = int(time.time())
        if now >= self._window_reset:
            self._window_reset, self._used = now + 3600, 0
        self._used += 1
        return {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": str(max(RATE_LIMIT - self._used, 0)),
            "x-ratelimit-reset": str(self._window_reset),
            "x-ratelimit-used": str(self._used),
            "x-ratelimit-resource": "core",
        }

    # Users and repositories.

    async def _user(self, request: Request) -> Response:
        return JSONResponse(self._user_json())

    async def _rate_limit(self, request: Request) -> Response:
        core = {
            "limit": RATE_LIMIT,
            "used": self._used,
            "remaining": RATE_LIMIT - self._used,
            "reset": self._window_reset,
        }
        return JSONResponse({"resources": {"core": core}, "rate": core})

    async def _create_user_repo(self, request: Request) -> Response:
        return self._create(self.login, await _body(request))

    async def _create_org_repo(self, request: Request, org: str) -> Response:
        if org.lower() not in self.orgs:
            raise _Refused(404, "Not Found")
        return self._create(self.orgs[org.lower()], await _body(request))

    def _create(self, owner: str, body: dict[str, Any]) -> Response:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _Refused(
                422,
                "Repository creation failed.",
                errors=[{"resource": "Repository", "code": "missing_field", "field": "name"}],
            )
        if self.repo(owner, _NOT_IN_NAME.sub("-", name)) is not None:
            error = {
                "resource": "Repository",
                "code": "custom",
                "field": "name",
                "message": "name already exists on this account",
            }
            raise _Refused(422, "Repository creation failed.", errors=[error])
        repo = self.create_repo(
            owner, name, auto_init=bool(body.get("auto_init")), private=bool(body.get("private"))
        )
        repo.description = body.get("description")
        return JSONResponse(self._repo_json(repo), status_code=201)

    async def _get_repo(self, request: Request, o: str, r: str) -> Response:
        return JSONResponse(self._repo_json(self._find(o, r)))

    # The Git Data API.

    async def _create_blob(self, request: Request, o: str, r: str) -> Response:
        repo = self._git(o, r)
        body = await _body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise _Refused(422, 'Invalid request.\n\n"content" wasn\'t supplied.')
        if body.get("encoding", "utf-8") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except binascii.Error:
                raise _Refused(422, "content is not valid Base64") from None
        else:
            data = content.encode()
        sha = self._store(repo, Blob(data))
        return JSONResponse({"sha": sha, "url": self._api(repo, f"git/blobs/{sha}")}, 201)

    async def _blob(self, request: Request, o: str, r: str, sha: str) -> Response:
        repo = self._git(o, r)
        blob = repo.objects.get(sha)
        if not isinstance(blob, Blob):
            raise _Refused(404, "Not Found")
        return JSONResponse(
            {
                "sha": sha,
                "node_id": _node_id("Blob", sha),
                "size": len(blob.data),
                "url": self._api(repo, f"git/blobs/{sha}"),
                "content": _wrapped_base64(blob.data),
                "encoding": "base64",
            }
        )

    async def _create_tree(self, request: Request, o: str, r: str) -> Response:
        repo = self._git(o, r)
        body = await _body(request)
        entries = body.get("tree")
        if not isinstance(entries, list):
            raise _Refused(422, 'Invalid request.\n\n"tree" wasn\'t supplied.')
        base = body.get("base_tree")
        flat = repo.tree_files(self._tree_sha(repo, str(base))) if base else {}
        for item in entries:
            self._apply_tree_item(repo, flat, item)
        sha = self._write_tree(repo, flat)
        return JSONResponse(self._tree_json(repo, sha, recursive=False), status_code=201)

    def _apply_tree_item(self, repo: Repository, flat: dict[str, TreeEntry], item: Any) -> None:
        """Put one entry of a create-tree request into `flat` (`{path: entry}`, files only)."""
        if not isinstance(item, dict):
            raise _Refused(422, "Invalid tree info")
        path, mode, kind = item.get("path"), item.get("mode"), item.get("type", "blob")
        if not isinstance(path, str) or not _valid_path(path):
            raise _Refused(422, f"tree.path contains a malformed path component: {path!r}")
        if "content" in item:
            sha: str | None = self._store(repo, Blob(str(item["content"]).encode()))
        else:
            sha = item.get("sha")
        if sha is None:  # a null sha deletes the path (and anything under it)
            for existing in [p for p in flat if p == path or p.startswith(path + "/")]:
                del flat[existing]
            return
        target = repo.objects.get(str(sha))
        if kind == "tree" and mode == "040000" and isinstance(target, Tree):
            for sub, entry in repo.tree_files(str(sha)).items():
                flat[f"{path}/{sub}"] = entry
            return
        if kind != "blob" or mode not in FILE_MODES or not isinstance(target, Blob):
            raise _Refused(422, f"tree.sha {sha} is not a valid blob", path=path)
        flat[path] = TreeEntry(str(mode), "blob", str(sha), path.rsplit("/", 1)[-1])

    def _write_tree(self, repo: Repository, flat: dict[str, TreeEntry]) -> str:
        """Store the trees for `{path: file entry}`, innermost first; the root tree's sha."""
        files: list[TreeEntry] = []
        folders: dict[str, dict[str, TreeEntry]] = {}
        for path, entry in flat.items():
            head, slash, rest = path.partition("/")
            if slash:
                folders.setdefault(head, {})[rest] = entry
            else:
                files.append(entry)
        if clash := {entry.name for entry in files} & folders.keys():
            raise _Refused(422, f"tree.path is both a file and a directory: {sorted(clash)}")
        subtrees = [
            TreeEntry("040000", "tree", self._write_tree(repo, inner), name)
            for name, inner in folders.items()
        ]
        return self._store(repo, Tree(tuple(files + subtrees)))

    async def _tree(self, request: Request, o: str, r: str, sha: str) -> Response:
        repo = self._git(o, r)
        recursive = request.query_params.get("recursive") not in (None, "", "0", "false")
        return JSONResponse(self._tree_json(repo, self._tree_sha(repo, sha), recursive=recursive))

    async def _create_commit(self, request: Request, o: str, r: str) -> Response:
        repo = self._git(o, r)
        body = await _body(request)
        message, tree, parents = body.get("message"), body.get("tree"), body.get("parents", [])
        if not isinstance(message, str):
            raise _Refused(422, 'Invalid request.\n\n"message" wasn\'t supplied.')
        if not isinstance(repo.objects.get(str(tree)), Tree):
            raise _Refused(422, "Tree SHA does not exist")
        if not isinstance(parents, list) or not all(
            isinstance(repo.objects.get(str(parent)), Commit) for parent in parents
        ):
            raise _Refused(422, "Parent SHA does not exist or is not a commit object")
        commit = self._new_commit(str(tree), tuple(str(p) for p in parents), message)
        sha = self._store(repo, commit)
        return JSONResponse(self._commit_json(repo, sha), status_code=201)

    async def _commit(self, request: Request, o: str, r: str, sha: str) -> Response:
        repo = self._git(o, r)
        if not isinstance(repo.objects.get(sha), Commit):
            raise _Refused(404, "Not Found")
        return JSONResponse(self._commit_json(repo, sha))

    async def _ref(self, request: Request, o: str, r: str, ref: str) -> Response:
        repo = self._git(o, r)
        if ref not in repo.refs:
            raise _Refused(404, "Not Found")
        return JSONResponse(self._ref_json(repo, ref))

    async def _create_ref(self, request: Request, o: str, r: str) -> Response:
        repo = self._git(o, r)
        body = await _body(request)
        ref, sha = str(body.get("ref", "")), str(body.get("sha", ""))
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise _Refused(422, "Reference name is invalid")
        if not isinstance(repo.objects.get(sha), Commit):
            raise _Refused(422, "Object does not exist")
        if ref.removeprefix("refs/") in repo.refs:
            raise _Refused(422, "Reference already exists")
        self._push(repo, ref.removeprefix("refs/"), sha)
        return JSONResponse(self._ref_json(repo, ref.removeprefix("refs/")), status_code=201)

    async def _move_ref(self, request: Request, o: str, r: str, ref: str) -> Response:
        repo = self._git(o, r)
        body = await _body(request)
        sha = str(body.get("sha", ""))
        if ref not in repo.refs:
            raise _Refused(422, "Reference does not exist")
        if not isinstance(repo.objects.get(sha), Commit):
            raise _Refused(422, "Object does not exist")
        if not body.get("force") and repo.refs[ref] not in repo.history(sha):
            raise _Refused(422, "Update is not a fast forward")
        self._push(repo, ref, sha)
        return JSONResponse(self._ref_json(repo, ref))

    # Contents: reading files, and the one way to write into an empty repository.

    async def _contents(self, request: Request, o: str, r: str, path: str) -> Response:
        repo = self._find(o, r)
        if repo.head is None:
            raise _Refused(404, "This repository is empty.")
        ref = request.query_params.get("ref") or repo.default_branch
        commit = repo.refs.get(f"heads/{ref}") or (
            ref if isinstance(repo.objects.get(ref), Commit) else None
        )
        if commit is None:
            raise _Refused(404, f"No commit found for the ref {ref}")
        flat = repo.tree_files(repo.commit(commit).tree)
        path = path.strip("/")
        if path in flat:
            blob = repo.objects[flat[path].sha]
            assert isinstance(blob, Blob)
            found = self._content_json(repo, path, flat[path])
            return JSONResponse({**found, "content": _wrapped_base64(blob.data)})
        prefix = f"{path}/" if path else ""
        names = {p[len(prefix) :].split("/", 1)[0] for p in flat if p.startswith(prefix)}
        if not names:
            raise _Refused(404, "Not Found")
        listing = []
        for name in sorted(names):
            full = prefix + name
            if full in flat:
                listing.append(self._content_json(repo, full, flat[full]))
            else:
                listing.append({"type": "dir", "name": name, "path": full})
        return JSONResponse(listing)

    async def _put_file(self, request: Request, o: str, r: str, path: str) -> Response:
        repo = self._find(o, r)
        body = await _body(request)
        message, content = body.get("message"), body.get("content")
        if not isinstance(message, str) or not isinstance(content, str):
            raise _Refused(422, 'Invalid request.\n\n"message" and "content" are required.')
        if not _valid_path(path):
            raise _Refused(422, "path contains a malformed path component")
        branch = str(body.get("branch") or repo.default_branch)
        head = repo.refs.get(f"heads/{branch}")
        if head is None and repo.head is not None:
            raise _Refused(404, f"Branch {branch} not found")
        flat = {} if head is None else repo.tree_files(repo.commit(head).tree)
        if path in flat and body.get("sha") is None:
            raise _Refused(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if path in flat and body.get("sha") != flat[path].sha:
            raise _Refused(409, f"{path} does not match {body.get('sha')}")
        try:
            blob = self._store(repo, Blob(base64.b64decode(content, validate=True)))
        except binascii.Error:
            raise _Refused(422, "content is not valid Base64") from None
        existed = path in flat
        flat[path] = TreeEntry("100644", "blob", blob, path.rsplit("/", 1)[-1])
        tree = self._write_tree(repo, flat)
        commit = self._store(repo, self._new_commit(tree, (head,) if head else (), message))
        self._push(repo, f"heads/{branch}", commit)
        answer = {
            "content": self._content_json(repo, path, flat[path]),
            "commit": self._commit_json(repo, commit),
        }
        return JSONResponse(answer, status_code=200 if existed else 201)

    # Pages.

    async def _pages(self, request: Request, o: str, r: str) -> Response:
        repo = self._find(o, r)
        if repo.pages is None:
            raise _Refused(404, "Not Found")
        return JSONResponse(self._pages_json(repo, repo.pages))

    async def _enable_pages(self, request: Request, o: str, r: str) -> Response:
        repo = self._find(o, r)
        body = await _body(request)
        source = body.get("source")
        if not isinstance(source, dict) or not isinstance(source.get("branch"), str):
            raise _Refused(422, 'Invalid request.\n\n"source" wasn\'t supplied.')
        branch, path = source["branch"], source.get("path", "/")
        if path not in ("/", "/docs"):
            raise _Refused(422, "Invalid request.\n\nThe source path must be / or /docs.")
        if repo.pages is not None:
            raise _Refused(409, "GitHub Pages is already enabled.")
        if f"heads/{branch}" not in repo.refs:
            raise _Refused(422, f"The {branch} branch must exist before GitHub Pages can be built.")
        html_url = f"{self.url}/pages-site/{repo.owner.lower()}/{repo.name}/"
        repo.pages = Pages(html_url=html_url, branch=branch, path=path)
        self._start_build(repo)
        return JSONResponse(self._pages_json(repo, repo.pages), status_code=201)

    async def _request_build(self, request: Request, o: str, r: str) -> Response:
        repo = self._find(o, r)
        if repo.pages is None:
            raise _Refused(404, "Not Found")
        self._start_build(repo)
        url = self._api(repo, "pages/builds/latest")
        return JSONResponse({"url": url, "status": "queued"}, status_code=201)

    async def _latest(self, request: Request, o: str, r: str) -> Response:
        repo = self._find(o, r)
        if repo.pages is None or not repo.pages.builds:
            raise _Refused(404, "Not Found")
        build = repo.pages.builds[-1]
        if build.status in ("queued", "building"):
            if build.polls_left > 0:
                build.polls_left -= 1
                build.status = "building"
            else:
                self._finish(repo, repo.pages, build)
        return JSONResponse(self._build_json(repo, build))

    def _start_build(self, repo: Repository) -> None:
        """Queue a build of the Pages branch's head."""
        pages = repo.pages
        head = repo.refs.get(f"heads/{pages.branch}") if pages else None
        if pages is not None and head is not None:
            pages.builds.append(Build(head, self.builds_before_built, _now()))

    def _finish(self, repo: Repository, pages: Pages, build: Build) -> None:
        """End `build`; the builds queued before it ended first (GitHub runs one at a time)."""
        for earlier in pages.builds:
            if earlier is not build and earlier.status in ("queued", "building"):
                earlier.status = "built"
        if self.build_error is not None:
            build.status, build.error = "errored", self.build_error
            return
        build.status = "built"
        prefix = "" if pages.path == "/" else pages.path.strip("/") + "/"
        pages.site = {
            path.removeprefix(prefix): data
            for path, data in repo.files(build.commit).items()
            if path.startswith(prefix)
        }

    def _serve_site(self, rest: str) -> Response:
        """What `{owner}.github.io/{repo}/…` would serve: the files of the last good build."""
        owner, _, rest = rest.partition("/")
        name, slash, path = rest.partition("/")
        repo = self.repo(owner, name)
        site = repo.pages.site if repo and repo.pages else {}
        if not site:
            return Response("Site not found", status_code=404, media_type="text/html")
        if not slash or (path and f"{path}/index.html" in site):  # a folder: add the slash
            folder = f"{path}/" if path else ""
            return RedirectResponse(f"{self.url}/pages-site/{owner}/{name}/{folder}", 301)
        if path == "" or path.endswith("/"):
            path += "index.html"
        if path not in site:
            missing = site.get("404.html", b"File not found")
            return Response(missing, status_code=404, media_type="text/html")
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return Response(site[path], media_type=media_type)

    # Shared pieces.

    def _find(self, owner: str, name: str) -> Repository:
        repo = self.repo(owner, name)
        if repo is None:
            raise _Refused(404, "Not Found")
        return repo

    def _git(self, owner: str, name: str) -> Repository:
        """The repository, for a Git Data request: these answer 409 while it has no commit."""
        repo = self._find(owner, name)
        if self.empty_next > 0:
            self.empty_next -= 1
            raise _Refused(409, EMPTY_REPOSITORY)
        if repo.head is None:
            raise _Refused(409, EMPTY_REPOSITORY)
        return repo

    def _push(self, repo: Repository, ref: str, sha: str) -> None:
        repo.refs[ref] = sha
        repo.pushed_at = _now()
        if repo.pages is not None and ref == f"heads/{repo.pages.branch}":
            self._start_build(repo)

    def _store(self, repo: Repository, obj: GitObject) -> str:
        sha = _git_sha(obj)
        repo.objects.setdefault(sha, obj)
        return sha

    def _new_commit(self, tree: str, parents: tuple[str, ...], message: str) -> Commit:
        person = {
            "name": self.login,
            "email": f"{self.user_id}+{self.login}@users.noreply.github.com",
            "date": _now(),
        }
        return Commit(tree, parents, message, person, dict(person))

    def _tree_sha(self, repo: Repository, tree_ish: str) -> str:
        """A tree's sha from a tree, a commit, or a branch name, as the trees endpoint takes."""
        sha = repo.refs.get(f"heads/{tree_ish}", tree_ish)
        found = repo.objects.get(sha)
        if isinstance(found, Commit):
            return found.tree
        if isinstance(found, Tree):
            return sha
        raise _Refused(404, "Not Found")

    def _api(self, repo: Repository, rest: str = "") -> str:
        return f"{self.url}/repos/{repo.owner}/{repo.name}" + (f"/{rest}" if rest else "")

    def _user_json(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "id": self.user_id,
            "node_id": _node_id("User", self.login),
            "type": "User",
            "site_admin": False,
            "url": f"{self.url}/users/{self.login}",
            "html_url": f"{self.url}/{self.login}",
        }

    def _repo_json(self, repo: Repository) -> dict[str, Any]:
        owner = {
            "login": repo.owner,
            "id": self.user_id if repo.owner_type == "User" else 2000 + repo.id,
            "type": repo.owner_type,
            "url": f"{self.url}/users/{repo.owner}",
            "html_url": f"{self.url}/{repo.owner}",
        }
        return {
            "id": repo.id,
            "node_id": _node_id("Repository", str(repo.id)),
            "name": repo.name,
            "full_name": f"{repo.owner}/{repo.name}",
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "owner": owner,
            "html_url": f"{self.url}/{repo.owner}/{repo.name}",
            "description": repo.description,
            "fork": False,
            "url": self._api(repo),
            "git_url": f"git://127.0.0.1/{repo.owner}/{repo.name}.git",
            "clone_url": f"{self.url}/{repo.owner}/{repo.name}.git",
            "default_branch": repo.default_branch,
            "has_pages": repo.pages is not None,
            "archived": False,
            "disabled": False,
            "size": sum(len(o.data) for o in repo.objects.values() if isinstance(o, Blob)) // 1024,
            "created_at": repo.created_at,
            "updated_at": repo.pushed_at or repo.created_at,
            "pushed_at": repo.pushed_at,
        }

    def _tree_json(self, repo: Repository, sha: str, *, recursive: bool) -> dict[str, Any]:
        def listing(tree_sha: str, prefix: str) -> list[dict[str, Any]]:
            tree = repo.objects[tree_sha]
            assert isinstance(tree, Tree)
            entries: list[dict[str, Any]] = []
            for entry in sorted(tree.entries, key=lambda e: e.name):
                item: dict[str, Any] = {
                    "path": prefix + entry.name,
                    "mode": entry.mode,
                    "type": entry.type,
                    "sha": entry.sha,
                    "url": self._api(repo, f"git/{entry.type}s/{entry.sha}"),
                }
                if isinstance(blob := repo.objects.get(entry.sha), Blob):
                    item["size"] = len(blob.data)
                entries.append(item)
                if recursive and entry.type == "tree":
                    entries.extend(listing(entry.sha, prefix + entry.name + "/"))
            return entries

        return {
            "sha": sha,
            "url": self._api(repo, f"git/trees/{sha}"),
            "tree": listing(sha, ""),
            "truncated": False,
        }

    def _commit_json(self, repo: Repository, sha: str) -> dict[str, Any]:
        commit = repo.commit(sha)
        return {
            "sha": sha,
            "node_id": _node_id("Commit", sha),
            "url": self._api(repo, f"git/commits/{sha}"),
            "html_url": f"{self.url}/{repo.owner}/{repo.name}/commit/{sha}",
            "author": commit.author,
            "committer": commit.committer,
            "message": commit.message,
            "tree": {"sha": commit.tree, "url": self._api(repo, f"git/trees/{commit.tree}")},
            "parents": [
                {
                    "sha": parent,
                    "url": self._api(repo, f"git/commits/{parent}"),
                    "html_url": f"{self.url}/{repo.owner}/{repo.name}/commit/{parent}",
                }
                for parent in commit.parents
            ],
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
            },
        }

    def _ref_json(self, repo: Repository, ref: str) -> dict[str, Any]:
        sha = repo.refs[ref]
        return {
            "ref": f"refs/{ref}",
            "node_id": _node_id("Ref", ref),
            "url": self._api(repo, f"git/refs/{ref}"),
            "object": {"sha": sha, "type": "commit", "url": self._api(repo, f"git/commits/{sha}")},
        }

    def _content_json(self, repo: Repository, path: str, entry: TreeEntry) -> dict[str, Any]:
        blob = repo.objects[entry.sha]
        assert isinstance(blob, Blob)
        html = f"{self.url}/{repo.owner}/{repo.name}/blob/{repo.default_branch}/{path}"
        return {
            "type": "file",
            "encoding": "base64",
            "size": len(blob.data),
            "name": entry.name,
            "path": path,
            "sha": entry.sha,
            "url": self._api(repo, f"contents/{path}"),
            "git_url": self._api(repo, f"git/blobs/{entry.sha}"),
            "html_url": html,
            "download_url": f"{self.url}/raw/{repo.owner}/{repo.name}/{repo.default_branch}/{path}",
        }

    def _pages_json(self, repo: Repository, pages: Pages) -> dict[str, Any]:
        return {
            "url": self._api(repo, "pages"),
            "status": pages.builds[-1].status if pages.builds else None,
            "cname": None,
            "custom_404": "404.html" in pages.site,
            "html_url": pages.html_url,
            "build_type": "legacy",
            "source": {"branch": pages.branch, "path": pages.path},
            "public": True,
            "https_enforced": False,
            "protected_domain_state": None,
            "pending_domain_unverified_at": None,
        }

    def _build_json(self, repo: Repository, build: Build) -> dict[str, Any]:
        return {
            "url": self._api(repo, "pages/builds/latest"),
            "status": build.status,
            "error": {"message": build.error},
            "pusher": self._user_json(),
            "commit": build.commit,
            "duration": 1200,
            "created_at": build.created_at,
            "updated_at": _now(),
        }


def _git_sha(obj: GitObject) -> str:
    """The sha git itself gives the object: sha1 of `{type} {size}\\0{body}`."""
    if isinstance(obj, Blob):
        kind, body = "blob", obj.data
    elif isinstance(obj, Tree):
        # Git orders a tree's entries by name, a subtree's name as if it ended with "/".
        ordered = sorted(obj.entries, key=lambda e: e.name + ("/" if e.type == "tree" else ""))
        kind = "tree"
        body = b"".join(
            f"{e.mode.lstrip('0')} {e.name}".encode() + b"\0" + bytes.fromhex(e.sha)
            for e in ordered
        )
    else:
        kind = "commit"
        lines = [f"tree {obj.tree}", *(f"parent {p}" for p in obj.parents)]
        for role, person in (("author", obj.author), ("committer", obj.committer)):
            when = int(datetime.fromisoformat(person["date"]).timestamp())
            lines.append(f"{role} {person['name']} <{person['email']}> {when} +0000")
        body = ("\n".join(lines) + "\n\n" + obj.message).encode()
    header = f"{kind} {len(body)}".encode() + b"\0"
    return hashlib.sha1(header + body, usedforsecurity=False).hexdigest()


def _valid_path(path: str) -> bool:
    parts = path.split("/")
    return all(part not in ("", ".", "..", ".git") for part in parts)


def _wrapped_base64(data: bytes) -> str:
    """Base64 in lines of 60 characters, as GitHub sends file and blob contents."""
    encoded = base64.b64encode(data).decode()
    return "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))


def _node_id(kind: str, key: str) -> str:
    return base64.b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise _Refused(400, "Problems parsing JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "Problems parsing JSON")
    return body


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--login", default=DEFAULT_LOGIN)
    parser.add_argument("--org", action="append", dest="orgs", help="repeatable")
    args = parser.parse_args()
    fake = FakeGitHub(
        args.token, args.login, orgs=args.orgs or ("kiln-apps",), host=args.host, port=args.port
    )
    fake.serve_forever()


if __name__ == "__main__":
    main()
