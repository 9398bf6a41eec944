"""The `/git` and `/pages` routes over real HTTP on loopback: `git clone` works, sites are served,
and nothing outside a repository or a site is."""

import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes.sites import router, sites_root
from shared.publish.base import Publication
from shared.publish.local import LocalPublisher

ROUND_1 = {
    "index.html": b"<!doctype html><h1>Round 1</h1>",
    "css/site.css": b"body { color: teal }",
    "docs/index.html": b"<h1>Docs</h1>",
    "img/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    "data.unknownext": b"\x00\x01",
}
ROUND_2 = {"index.html": b"<!doctype html><h1>Round 2</h1>", "js/app.js": b"console.log(2)"}
SECRET = b"outside every site"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    """An app with only the sites router and the error handlers."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def base_url(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a loopback port of its own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def root(app: FastAPI, tmp_path: Path) -> Iterator[Path]:
    """This test's sites root, which the served app reads from."""
    root = tmp_path / "sites"
    root.mkdir()
    (root / "secret.txt").write_bytes(SECRET)  # next to git/ and pages/, reachable by `..`
    app.dependency_overrides[sites_root] = lambda: root
    yield root
    app.dependency_overrides.clear()


@pytest.fixture
def publisher(root: Path, base_url: str) -> LocalPublisher:
    return LocalPublisher(root, base_url)


@pytest.fixture
def client(base_url: str, root: Path) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git as an evaluator would, but with no user config and never prompting."""
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def checkout(directory: Path) -> dict[str, bytes]:
    """The files of a clone, without its `.git`."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in directory.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(directory).parts
    }


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written: httpx would normalise away `..` before sending it."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_git_clone_and_pull_over_http(
    publisher: LocalPublisher, base_url: str, tmp_path: Path
) -> None:
    first = publisher.publish("demo", ROUND_1, message="Round 1")
    assert first.repo_url == f"{base_url}/git/demo.git"
    clone = tmp_path / "clone"

    git("clone", "--quiet", first.repo_url, str(clone))

    assert checkout(clone) == ROUND_1
    assert git("log", "--format=%H %s", cwd=clone).splitlines() == [f"{first.commit_sha} Round 1"]
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone).strip() == "main"

    second = publisher.publish("demo", ROUND_2, message="Round 2")
    git("pull", "--quiet", "--ff-only", cwd=clone)

    assert checkout(clone) == ROUND_2
    assert git("log", "--format=%H %P", cwd=clone).splitlines() == [
        f"{second.commit_sha} {first.commit_sha}",
        f"{first.commit_sha} ",
    ]


def test_git_files_have_dumb_protocol_types(
    publisher: LocalPublisher, client: httpx.Client
) -> None:
    publication = publisher.publish("demo", ROUND_1, message="Round 1")

    refs = client.get("/git/demo.git/info/refs")
    assert refs.status_code == 200
    assert refs.headers["content-type"].startswith("text/plain")
    assert refs.text == f"{publication.commit_sha}\trefs/heads/main\n"
    assert client.get("/git/demo.git/HEAD").text == "ref: refs/heads/main\n"
    sha = publication.commit_sha
    loose = client.get(f"/git/demo.git/objects/{sha[:2]}/{sha[2:]}")
    assert loose.status_code == 200
    assert loose.headers["content-type"] == "application/octet-stream"


def test_site_is_served_with_types_and_directory_indexes(
    publisher: LocalPublisher, client: httpx.Client, base_url: str
) -> None:
    publication = publisher.publish("demo", ROUND_1, message="Round 1")
    assert publication.pages_url == f"{base_url}/pages/demo/"

    home = client.get("/pages/demo/")
    assert home.status_code == 200
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    assert home.content == ROUND_1["index.html"]
    assert home.headers["x-content-type-options"] == "nosniff"
    css = client.get("/pages/demo/css/site.css")
    assert css.headers["content-type"].startswith("text/css")
    assert css.content == ROUND_1["css/site.css"]
    png = client.get("/pages/demo/img/logo.png")
    assert (png.headers["content-type"], png.content) == ("image/png", ROUND_1["img/logo.png"])
    unknown = client.get("/pages/demo/data.unknownext")
    assert unknown.headers["content-type"] == "application/octet-stream"
    assert client.get("/pages/demo/docs/").content == ROUND_1["docs/index.html"]
    head = client.head("/pages/demo/")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(ROUND_1["index.html"]))


@pytest.mark.parametrize(
    ("path", "redirected"),
    [("/pages/demo", "/pages/demo/"), ("/pages/demo/docs", "/pages/demo/docs/")],
)
def test_directories_without_a_slash_redirect(
    publisher: LocalPublisher, client: httpx.Client, path: str, redirected: str
) -> None:
    publisher.publish("demo", ROUND_1, message="Round 1")

    response = client.get(path)
    assert response.status_code == 307
    assert response.next_request is not None
    assert response.next_request.url.path == redirected
    assert client.get(path, follow_redirects=True).status_code == 200


def test_next_round_replaces_the_site(publisher: LocalPublisher, client: httpx.Client) -> None:
    publisher.publish("demo", ROUND_1, message="Round 1")
    publisher.publish("demo", ROUND_2, message="Round 2")

    assert client.get("/pages/demo/").content == ROUND_2["index.html"]
    assert client.get("/pages/demo/js/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/pages/demo/css/site.css").status_code == 404


@pytest.mark.parametrize(
    "target",
    [
        "/pages/demo/../../secret.txt",
        "/pages/demo/../../../../../../etc/passwd",
        "/pages/demo/%2e%2e/%2e%2e/secret.txt",
        "/pages/demo/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/pages/demo/..%2f..%2fgit%2fdemo.git%2fconfig",
        "/pages/demo//etc/passwd",
        "/pages/demo/%2fetc%2fpasswd",
        "/pages/demo/index.html%00",
        "/pages/../secret.txt",
        "/pages/%2e%2e/secret.txt",
        "/pages/.demo/",
        "/git/demo.git/../../secret.txt",
        "/git/demo.git/objects/../../../secret.txt",
        "/git/demo.git/%2e%2e/%2e%2e/secret.txt",
        "/git/demo.git/config",
        "/git/demo.git/description",
        "/git/demo.git/hooks/pre-receive.sample",
        "/git/demo.git/refs/heads/main",
        "/git/..%2fsecret.txt/info/refs",
    ],
)
def test_nothing_outside_a_site_or_a_repository_is_served(
    publisher: LocalPublisher, base_url: str, target: str
) -> None:
    publisher.publish("demo", ROUND_1, message="Round 1")

    status, body = raw_get(base_url, target)

    assert status == 404, body
    assert SECRET not in body
    assert httpx.Response(status, content=body).json()["error"]["code"] == "not_found"


def test_exports_are_reachable_only_through_their_site(
    publisher: LocalPublisher, client: httpx.Client
) -> None:
    publication = publisher.publish("demo", ROUND_1, message="Round 1")

    assert client.get(f"/pages/.demo@{publication.commit_sha}/index.html").status_code == 404


@pytest.mark.parametrize(
    "path", ["/git/nope.git/info/refs", "/git/nope.git/HEAD", "/pages/nope/", "/pages/nope"]
)
def test_unknown_repositories_and_sites_are_404(
    publisher: LocalPublisher, client: httpx.Client, path: str
) -> None:
    publisher.publish("demo", ROUND_1, message="Round 1")

    response = client.get(path)

    assert response.status_code == 404
    error = response.json()["error"]
    assert (sorted(error), error["code"]) == (["code", "message"], "not_found")


def test_missing_page_is_404_in_the_error_shape(
    publisher: LocalPublisher, client: httpx.Client
) -> None:
    publisher.publish("demo", ROUND_1, message="Round 1")

    response = client.get("/pages/demo/nope.html")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_publication_is_live_at_its_urls(
    publisher: LocalPublisher, client: httpx.Client
) -> None:
    publication: Publication = publisher.publish("demo", ROUND_1, message="Round 1")
    publisher.wait_until_live(publication, timeout_s=1)

    assert client.get(publication.pages_url).content == ROUND_1["index.html"]
    assert publication.commit_sha in client.get(f"{publication.repo_url}/info/refs").text
