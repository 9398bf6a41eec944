"""The GitHub publisher: each round is one commit (Git Data API) to a public repository, served by
GitHub Pages from the default branch."""

import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from shared.exceptions import PublishFailed
from shared.publish.base import Publication

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"  # the REST API version every request asks for
USER_AGENT = "kiln-publisher"  # GitHub refuses requests without a User-Agent
FILE_MODE = "100644"  # a regular, non-executable file in a Git tree

MAX_REPO_NAME = 100
RATE_LIMIT_WAIT_CAP_S = 60.0  # a job sleeps this long at most, even if the limit resets later
SECONDARY_LIMIT_WAIT_S = 60.0  # GitHub: without `retry-after`, wait at least a minute
BACKOFF_BASE_S = 1.0  # first wait after a 5xx or network error; doubles on each retry
BACKOFF_CAP_S = 30.0
EMPTY_REPO_WAIT_S = 1.0  # a new repository's auto_init commit can lag its creation
EMPTY_REPO_TRIES = 4
POLL_INTERVAL_S = 2.0  # between looks at the Pages build and at the site

_EMPTY_REPO_MESSAGE = "Git Repository is empty"
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class _EmptyRepository(Exception):
    """GitHub answered 409 `Git Repository is empty.`: the default branch has no commit yet."""


def repo_name(task: str) -> str:
    """`task` as a valid GitHub repository name: runs of other characters become one `-`."""
    name = _NOT_IN_NAME.sub("-", task)
    if name in {"", ".", ".."}:
        return f"task-{_digest(task)}"
    if len(name) > MAX_REPO_NAME:
        # Keep long ids that share a prefix apart: cutting alone would give them one repository.
        return f"{name[: MAX_REPO_NAME - 13]}-{_digest(task)}"
    return name


class GitHubPublisher:
    """Publishes through GitHub's REST API with a token; see `Publisher` for the contract."""

    name = "github"

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        owner: str | None = None,
        client: httpx.Client | None = None,
        retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        # Sent with API requests only: the client may be shared, and the Pages site is another host.
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }
        self._owner = owner
        self._login: str | None = None
        self._retries = max(retries, 0)
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))

    def publish(self, repo: str, files: dict[str, bytes], *, message: str) -> Publication:
        """Commit exactly `files` on top of the default branch's head and serve them with Pages."""
        if not files:
            raise PublishFailed(f"Nothing to publish to {repo}: the round has no files")
        info = self._ensure_repo(self._owner_name(), repo)
        owner, name, branch = info["owner"]["login"], info["name"], info["default_branch"]
        sha = self._commit(owner, name, branch, files, message)
        self._enable_pages(owner, name, branch)
        pages = self._call("GET", f"{_repo_path(owner, name)}/pages").json()
        return Publication(repo_url=info["html_url"], commit_sha=sha, pages_url=pages["html_url"])

    def current_files(self, repo: str) -> dict[str, bytes] | None:
        """The files at the head of `repo`'s default branch, or None if there is no such repo."""
        found = self._call("GET", _repo_path(self._owner_name(), repo), allow=(404,))
        if found.status_code == 404:
            return None
        info = found.json()
        path = _repo_path(info["owner"]["login"], info["name"])
        try:
            head = self._head(path, info["default_branch"])
        except _EmptyRepository:
            return {}
        tree_sha = self._call("GET", f"{path}/git/commits/{head}").json()["tree"]["sha"]
        tree = self._call("GET", f"{path}/git/trees/{tree_sha}", params={"recursive": "1"}).json()
        if tree.get("truncated"):
            raise PublishFailed(f"{info['full_name']} has too many files for GitHub to list")
        contents: dict[str, bytes] = {}
        files: dict[str, bytes] = {}
        for entry in tree["tree"]:
            if entry["type"] != "blob":
                continue  # directories are listed too, and submodules have no blob
            sha = entry["sha"]
            if sha not in contents:
                contents[sha] = _blob_bytes(self._call("GET", f"{path}/git/blobs/{sha}").json())
            files[entry["path"]] = contents[sha]
        return files

    def wait_until_live(self, publication: Publication, *, timeout_s: float) -> None:
        """Wait for the Pages build of `publication`'s commit, then for the site to answer 200."""
        deadline = time.monotonic() + timeout_s
        owner, repo = _owner_and_repo(publication.repo_url)
        latest = f"{_repo_path(owner, repo)}/pages/builds/latest"
        short = publication.commit_sha[:7]
        while True:
            answer = self._call("GET", latest, allow=(404,))  # 404: no build has started yet
            build = _object(answer) if answer.status_code == 200 else {}
            status = build.get("status") or "no build"
            if build.get("commit") == publication.commit_sha:
                if status == "built":
                    break
                if status == "errored":
                    reason = (build.get("error") or {}).get("message") or "no reason given"
                    raise PublishFailed(f"The GitHub Pages build of {short} failed: {reason}")
            self._pause_until(
                deadline,
                f"GitHub Pages did not build {short} within {timeout_s:g} s (last: {status})",
            )
        while not self._site_answers(publication.pages_url):
            self._pause_until(
                deadline, f"{publication.pages_url} did not come up within {timeout_s:g} s"
            )

    def close(self) -> None:
        """Close the HTTP client, unless it was injected (its owner closes it)."""
        if self._owns_client:
            self._client.close()

    def _owner_name(self) -> str:
        return self._owner or self._user()

    def _user(self) -> str:
        """The token's user, asked once."""
        if self._login is None:
            self._login = str(self._call("GET", "/user").json()["login"])
        return self._login

    def _ensure_repo(self, owner: str, repo: str) -> dict[str, Any]:
        """The repository, created public with an initial commit if it does not exist yet."""
        path = _repo_path(owner, repo)
        found = self._call("GET", path, allow=(404,))
        if found.status_code != 404:
            return _object(found)
        if owner.lower() == self._user().lower():  # GitHub logins ignore case
            create = "/user/repos"
        else:
            create = f"/orgs/{quote(owner, safe='')}/repos"
        # auto_init: the Git Data API refuses to write to a repository without a commit.
        body = {"name": repo, "private": False, "auto_init": True}
        created = self._call("POST", create, json=body, allow=(422,))
        if created.status_code == 422:
            if not _already_exists(created):
                raise _failure(created, "POST", create)
            # Made by an earlier attempt, or by our own POST whose answer was lost and retried.
            return _object(self._call("GET", path))
        return _object(created)

    def _commit(
        self, owner: str, repo: str, branch: str, files: Mapping[str, bytes], message: str
    ) -> str:
        """One commit of exactly `files` on `branch`; its sha."""
        tries = 0
        while True:
            try:
                return self._commit_once(_repo_path(owner, repo), branch, files, message)
            except _EmptyRepository:
                tries += 1
                if tries >= EMPTY_REPO_TRIES:
                    raise PublishFailed(
                        f"GitHub repository {owner}/{repo} stayed empty: no first commit appeared"
                    ) from None
                if tries > 1:  # auto_init had its chance: make the first commit ourselves
                    self._initialize(owner, repo)
                self._sleep(EMPTY_REPO_WAIT_S)

    def _commit_once(self, path: str, branch: str, files: Mapping[str, bytes], message: str) -> str:
        # Blobs, trees and commits are addressed by content, so redoing this after a failure
        # only leaves unreferenced objects behind; the ref moves once, at the end.
        head = self._head(path, branch)
        blobs: dict[bytes, str] = {}
        for content in files.values():
            if content not in blobs:
                body = {"content": base64.b64encode(content).decode(), "encoding": "base64"}
                blobs[content] = self._call("POST", f"{path}/git/blobs", json=body).json()["sha"]
        # The whole tree and no base_tree: files of earlier rounds that are not here disappear.
        entries = [
            {"path": name, "mode": FILE_MODE, "type": "blob", "sha": blobs[content]}
            for name, content in sorted(files.items())
        ]
        tree = self._call("POST", f"{path}/git/trees", json={"tree": entries}).json()["sha"]
        new = {"message": message, "tree": tree, "parents": [head]}
        commit: str = self._call("POST", f"{path}/git/commits", json=new).json()["sha"]
        ref = f"{path}/git/refs/heads/{quote(branch, safe='')}"
        self._call("PATCH", ref, json={"sha": commit, "force": False})
        return commit

    def _head(self, path: str, branch: str) -> str:
        """The sha of `branch`'s head commit."""
        ref = self._call("GET", f"{path}/git/ref/heads/{quote(branch, safe='')}").json()
        return str(ref["object"]["sha"])

    def _initialize(self, owner: str, repo: str) -> None:
        """Give an empty repository its first commit, through the one API that writes to one."""
        body = {
            "message": "Initial commit",
            "content": base64.b64encode(f"# {repo}\n".encode()).decode(),
        }
        path = f"{_repo_path(owner, repo)}/contents/README.md"
        # 422 ("sha" wasn't supplied) or 409: a first commit landed meanwhile, which will do.
        self._call("PUT", path, json=body, allow=(409, 422))

    def _enable_pages(self, owner: str, repo: str, branch: str) -> None:
        """Serve `branch` at `/` with Pages; rebuild a site that was already enabled."""
        path = _repo_path(owner, repo)
        body = {"source": {"branch": branch, "path": "/"}}
        enabled = self._call("POST", f"{path}/pages", json=body, allow=(409,))
        if enabled.status_code == 409:  # already enabled, by an earlier round
            # Ask for a build of the new head rather than count on the push having started one.
            self._call("POST", f"{path}/pages/builds")

    def _site_answers(self, url: str) -> bool:
        """Whether the site answers 200; without the API headers, so the token stays with GitHub."""
        try:
            response = self._client.get(
                url, headers={"User-Agent": USER_AGENT}, follow_redirects=True
            )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _pause_until(self, deadline: float, failure: str) -> None:
        """Sleep one poll interval, or raise `failure` if the deadline has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishFailed(failure)
        self._sleep(min(POLL_INTERVAL_S, left))

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One API request, retried through rate limits, 5xx and network errors; any answer
        other than 2xx or `allow` becomes `PublishFailed` (or `_EmptyRepository`)."""
        url = self.api_url + path
        problem = "no attempt"
        for attempt in range(self._retries + 1):
            try:
                response = self._client.request(
                    method, url, json=json, params=params, headers=self._headers
                )
            except httpx.TransportError as exc:
                problem, wait = type(exc).__name__, _backoff(attempt)
            else:
                if response.is_success or response.status_code in allow:
                    return response
                if response.status_code == 409 and _message(response).startswith(
                    _EMPTY_REPO_MESSAGE
                ):
                    raise _EmptyRepository()
                retry_in = _retry_wait(response, attempt)
                if retry_in is None:
                    raise _failure(response, method, path)
                problem, wait = f"{response.status_code} {_message(response)}", retry_in
            if attempt < self._retries:
                log.warning("GitHub %s %s: %s; retrying in %g s", method, path, problem, wait)
                self._sleep(wait)
        raise PublishFailed(
            f"GitHub kept failing on {method} {path} ({problem}) after {self._retries + 1} tries"
        )


def _retry_wait(response: httpx.Response, attempt: int) -> float | None:
    """Seconds to wait before retrying `response`'s request, or None if retrying cannot help."""
    status, headers = response.status_code, response.headers
    if status in (403, 429):
        if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            # The reset is in whole epoch seconds: round up so we never wake just before it.
            until_reset = math.ceil(float(headers["x-ratelimit-reset"]) - time.time())
            return float(min(max(until_reset, 1), RATE_LIMIT_WAIT_CAP_S))
        if (retry_after := _seconds(headers.get("retry-after"))) is not None:
            return min(max(retry_after, 0.0), RATE_LIMIT_WAIT_CAP_S)
        if "secondary rate limit" in _message(response).lower():
            return SECONDARY_LIMIT_WAIT_S
        return _backoff(attempt) if status == 429 else None  # other 403s: no permission
    if status >= 500:
        return _backoff(attempt)
    return None


def _failure(response: httpx.Response, method: str, path: str) -> PublishFailed:
    """The error for an answer that retrying cannot fix, in GitHub's words."""
    if response.status_code == 401:
        return PublishFailed(
            "GitHub rejected the token (401 Bad credentials): check KILN_GITHUB_TOKEN"
        )
    details = "; ".join(
        str(error.get("message") or error.get("code"))
        for error in _object(response).get("errors") or []
        if isinstance(error, dict)
    )
    said = _message(response) + (f" ({details})" if details else "")
    return PublishFailed(f"GitHub answered {response.status_code} to {method} {path}: {said}")


def _object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of an answer, or {} when it has none."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    return str(_object(response).get("message") or response.reason_phrase)


def _already_exists(response: httpx.Response) -> bool:
    errors = _object(response).get("errors") or []
    return any("already exists" in str(error.get("message", "")) for error in errors)


def _seconds(value: str | None) -> float | None:
    """A `retry-after` header's seconds; None when absent or not a number."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    return min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_CAP_S)


def _blob_bytes(blob: dict[str, Any]) -> bytes:
    content = str(blob.get("content") or "")
    if blob.get("encoding") == "base64":
        return base64.b64decode(content)  # GitHub wraps it in lines; the decoder skips them
    return content.encode()


def _repo_path(owner: str, repo: str) -> str:
    return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"


def _owner_and_repo(repo_url: str) -> tuple[str, str]:
    """Owner and name from a repository's web URL (`https://github.com/{owner}/{repo}`): the
    publication is all a later task has, and it may run in another process."""
    parts = urlsplit(repo_url).path.strip("/").split("/")
    if len(parts) < 2:
        raise PublishFailed(f"Not a repository URL: {repo_url}")
    return parts[-2], parts[-1].removesuffix(".git")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
