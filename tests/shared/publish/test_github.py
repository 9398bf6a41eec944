"""GitHubPublisher against the fake GitHub, over real HTTP on loopback."""

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.exceptions import PublishFailed
from shared.publish.base import Publication, Publisher
from shared.publish.github import (
    BACKOFF_BASE_S,
    EMPTY_REPO_WAIT_S,
    POLL_INTERVAL_S,
    RATE_LIMIT_WAIT_CAP_S,
    USER_AGENT,
    GitHubPublisher,
    repo_name,
)
from tests.fakes.github import FakeGitHub, Repository

TOKEN = "ghp_kiln-test-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[3]

ROUND_1 = {
    "index.html": b"<!doctype html><h1>Round 1</h1>",
    "app.js": b"console.log('hello');\n",
    "assets/style.css": b"h1 { color: teal; }\n",
    "assets/img/logo.bin": bytes(range(256)),  # not UTF-8: content must survive as bytes
}
ROUND_2 = {
    "index.html": b"<!doctype html><h1>Round 2</h1>",
    "app.js": b"console.log('hello');\n",  # unchanged
    "assets/theme.css": b"h1 { color: navy; }\n",  # new; style.css and logo.bin are gone
}


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    """What the publisher asked to sleep, in order; nothing really sleeps."""
    return []


@pytest.fixture
def publisher(fake: FakeGitHub, sleeps: list[float]) -> Iterator[GitHubPublisher]:
    publisher = GitHubPublisher(fake.url, TOKEN, sleep=sleeps.append)
    yield publisher
    publisher.close()


def repo_of(fake: FakeGitHub, name: str, owner: str = "kiln-bot") -> Repository:
    repo = fake.repo(owner, name)
    assert repo is not None, f"{owner}/{name} was not created"
    return repo


def posted(fake: FakeGitHub, suffix: str, method: str = "POST") -> int:
    """How many `method` requests went to a path ending in `suffix`."""
    return sum(1 for m, path in fake.requests if m == method and path.endswith(suffix))


def api_get(fake: FakeGitHub, path: str) -> httpx.Response:
    return httpx.get(fake.url + path, headers={"Authorization": f"Bearer {TOKEN}"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_it_is_a_publisher(publisher: GitHubPublisher) -> None:
    checked: Publisher = publisher
    assert checked.name == "github"


def test_first_round_makes_a_public_repo_with_one_commit_and_a_live_site(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    repo = repo_of(fake, "demo-app")
    assert not repo.private
    assert posted(fake, "/user/repos") == 1
    assert repo.head == publication.commit_sha
    (initial,) = repo.parents(publication.commit_sha)  # on top of the auto_init commit
    assert repo.parents(initial) == []
    assert repo.files(initial) == {"README.md": b"# demo-app\n"}
    assert repo.files() == ROUND_1  # exactly the round's files: the README is gone
    assert repo.commit(publication.commit_sha).message == "Round 1"
    assert posted(fake, "/git/commits") == 1
    assert posted(fake, "/git/refs/heads/main", method="PATCH") == 1
    assert posted(fake, "/git/blobs") == len(ROUND_1)

    assert repo.pages is not None
    assert (repo.pages.branch, repo.pages.path) == ("main", "/")
    assert publication.repo_url == api_get(fake, "/repos/kiln-bot/demo-app").json()["html_url"]
    assert (
        publication.pages_url == api_get(fake, "/repos/kiln-bot/demo-app/pages").json()["html_url"]
    )
    assert httpx.get(publication.pages_url).status_code == 404  # not built yet

    publisher.wait_until_live(publication, timeout_s=10)

    assert sleeps == [POLL_INTERVAL_S]  # the first look at the build saw it `building`
    site = httpx.get(publication.pages_url)
    assert site.status_code == 200
    assert site.content == ROUND_1["index.html"]
    assert (
        httpx.get(publication.pages_url + "assets/style.css").content == ROUND_1["assets/style.css"]
    )


def test_second_round_is_one_commit_on_top_of_the_first(
    fake: FakeGitHub, publisher: GitHubPublisher
) -> None:
    first = publisher.publish("demo-app", ROUND_1, message="Round 1")
    publisher.wait_until_live(first, timeout_s=10)
    fake.requests.clear()

    second = publisher.publish("demo-app", ROUND_2, message="Round 2")

    repo = repo_of(fake, "demo-app")
    assert repo.parents(second.commit_sha) == [first.commit_sha]
    assert len(repo.history()) == 3  # auto_init, round 1, round 2
    assert repo.files() == ROUND_2
    assert publisher.current_files("demo-app") == ROUND_2
    assert posted(fake, "/user/repos") == 0
    assert posted(fake, "/git/commits") == 1
    assert posted(fake, "/pages") == 1  # answered 409: already enabled
    assert posted(fake, "/pages/builds") == 1  # so a build was asked for
    assert second.pages_url == first.pages_url
    assert second.repo_url == first.repo_url
    assert httpx.get(second.pages_url).content == ROUND_1["index.html"]  # the old build

    publisher.wait_until_live(second, timeout_s=10)

    assert httpx.get(second.pages_url).content == ROUND_2["index.html"]
    assert httpx.get(second.pages_url + "assets/theme.css").status_code == 200
    assert httpx.get(second.pages_url + "assets/style.css").status_code == 404


def test_current_files_reads_the_head_or_says_there_is_no_repo(
    fake: FakeGitHub, publisher: GitHubPublisher
) -> None:
    assert publisher.current_files("demo-app") is None
    same = {"a.txt": b"same\n", "deep/er/b.txt": b"same\n", "c.bin": b"\x00\xff\x10"}
    publisher.publish("demo-app", same, message="Round 1")
    assert publisher.current_files("demo-app") == same

    fake.create_repo("kiln-bot", "empty-one", auto_init=False)
    assert publisher.current_files("empty-one") == {}


def test_a_repo_left_by_an_earlier_attempt_is_reused(
    fake: FakeGitHub, publisher: GitHubPublisher
) -> None:
    left = fake.create_repo("kiln-bot", "demo-app")  # the attempt died after creating it
    initial = left.head

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert posted(fake, "/user/repos") == 0
    assert left.parents(publication.commit_sha) == [initial]
    assert left.files() == ROUND_1


def test_publishing_the_same_round_twice_is_fine(fake: FakeGitHub, sleeps: list[float]) -> None:
    publications: list[Publication] = []
    for _ in range(2):  # two workers in turn, as after a crash and a retry of the job
        publisher = GitHubPublisher(fake.url, TOKEN, sleep=sleeps.append)
        publications.append(publisher.publish("demo-app", ROUND_1, message="Round 1"))
        publisher.wait_until_live(publications[-1], timeout_s=10)
        publisher.close()

    repo = repo_of(fake, "demo-app")
    first, second = publications
    assert repo.parents(second.commit_sha) == [first.commit_sha]
    assert repo.files() == ROUND_1
    assert len(fake.repos) == 1
    assert httpx.get(second.pages_url).content == ROUND_1["index.html"]


class LoseOneAnswer(httpx.BaseTransport):
    """Delivers every request, but loses the answer to the first `method path` one, as a
    connection dropped after GitHub acted would."""

    def __init__(self, method: str, path: str) -> None:
        self._inner = httpx.HTTPTransport()
        self._method, self._path = method, path
        self.lost = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not self.lost and (request.method, request.url.path) == (self._method, self._path):
            response.read()
            response.close()
            self.lost = True
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/user/repos"),
        ("POST", "/repos/kiln-bot/demo-app/git/commits"),
        ("PATCH", "/repos/kiln-bot/demo-app/git/refs/heads/main"),
    ],
    ids=["create-repo", "create-commit", "move-ref"],
)
def test_a_lost_answer_is_retried_without_harm(
    fake: FakeGitHub, sleeps: list[float], method: str, path: str
) -> None:
    transport = LoseOneAnswer(method, path)
    with httpx.Client(transport=transport) as client:
        publisher = GitHubPublisher(fake.url, TOKEN, client=client, sleep=sleeps.append)
        publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert transport.lost
    assert fake.requests.count((method, path)) == 2
    assert sleeps == [BACKOFF_BASE_S]
    repo = repo_of(fake, "demo-app")
    assert repo.head == publication.commit_sha
    assert len(repo.history()) == 2  # one commit on top of auto_init, whatever was retried
    assert repo.files() == ROUND_1


def test_a_wrong_token_fails_at_once_and_the_message_does_not_show_it(
    fake: FakeGitHub, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "ghp_wrong-secret-9876543210"
    publisher = GitHubPublisher(fake.url, wrong, sleep=sleeps.append)

    with pytest.raises(PublishFailed) as caught:
        publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert caught.value.code == "publish_failed"
    assert "GitHub rejected the token" in caught.value.message
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value.details)
    assert wrong not in caplog.text
    assert fake.requests == [("GET", "/user")]  # no retry
    assert sleeps == []
    assert fake.repos == {}


def test_the_token_goes_to_the_api_and_never_to_the_site(fake: FakeGitHub) -> None:
    seen: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [seen.append]}) as client:
        publisher = GitHubPublisher(fake.url, TOKEN, client=client, sleep=lambda _: None)
        publication = publisher.publish("demo-app", ROUND_1, message="Round 1")
        publisher.wait_until_live(publication, timeout_s=10)

    site = [r for r in seen if r.url.path.startswith("/pages-site/")]
    api = [r for r in seen if not r.url.path.startswith("/pages-site/")]
    assert site
    assert all("authorization" not in r.headers for r in site)
    for request in api:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["accept"] == "application/vnd.github+json"
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["user-agent"] == USER_AGENT


def test_the_primary_rate_limit_is_waited_out_until_its_reset(
    fake: FakeGitHub,
    publisher: GitHubPublisher,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.rate_limit_next = 1  # its reset is a second ahead

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [1.0]
    assert fake.requests[:2] == [("GET", "/user"), ("GET", "/user")]
    assert repo_of(fake, "demo-app").head == publication.commit_sha
    assert "403" in caplog.text
    assert TOKEN not in caplog.text


def test_a_far_rate_limit_reset_is_waited_for_at_most_the_cap(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    fake.rate_limit_next = 1
    fake.rate_limit_reset_in = 3600

    publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [RATE_LIMIT_WAIT_CAP_S]


def test_a_secondary_rate_limit_is_waited_out_for_its_retry_after(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    fake.secondary_limit_next = 2
    fake.secondary_retry_after = 7

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [7.0, 7.0]  # the header's seconds, not a back-off
    assert fake.requests[:3] == [("GET", "/user")] * 3
    assert repo_of(fake, "demo-app").head == publication.commit_sha


def test_a_502_is_retried_with_growing_waits(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    fake.fail_next = 2

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S]
    assert fake.requests[:3] == [("GET", "/user")] * 3
    assert repo_of(fake, "demo-app").files(publication.commit_sha) == ROUND_1


def test_502s_beyond_the_retries_fail_the_publication(
    fake: FakeGitHub, sleeps: list[float]
) -> None:
    fake.fail_next = 10
    publisher = GitHubPublisher(fake.url, TOKEN, retries=2, sleep=sleeps.append)

    with pytest.raises(PublishFailed, match=r"kept failing on GET /user \(502"):
        publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert len(fake.requests) == 3
    assert sleeps == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S]


def test_an_unreachable_github_fails_after_the_retries(sleeps: list[float]) -> None:
    publisher = GitHubPublisher(f"http://127.0.0.1:{free_port()}", TOKEN, sleep=sleeps.append)

    with pytest.raises(PublishFailed, match="ConnectError"):
        publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    publisher.close()


def test_a_new_repo_whose_first_commit_lags_is_waited_for(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    fake.empty_next = 1  # the first Git Data request after creating it answers 409

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert sleeps == [EMPTY_REPO_WAIT_S]
    assert posted(fake, "/contents/README.md", method="PUT") == 0  # auto_init's commit came
    assert len(repo_of(fake, "demo-app").history(publication.commit_sha)) == 2


def test_an_empty_repo_gets_a_first_commit_then_the_round(
    fake: FakeGitHub, publisher: GitHubPublisher, sleeps: list[float]
) -> None:
    fake.create_repo("kiln-bot", "demo-app", auto_init=False)

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert posted(fake, "/contents/README.md", method="PUT") == 1
    assert sleeps == [EMPTY_REPO_WAIT_S, EMPTY_REPO_WAIT_S]
    repo = repo_of(fake, "demo-app")
    (initial,) = repo.parents(publication.commit_sha)
    assert repo.files(initial) == {"README.md": b"# demo-app\n"}
    assert repo.files() == ROUND_1


def test_an_org_owner_gets_the_repo_in_the_org(fake: FakeGitHub, sleeps: list[float]) -> None:
    publisher = GitHubPublisher(fake.url, TOKEN, owner="kiln-apps", sleep=sleeps.append)

    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")
    publisher.wait_until_live(publication, timeout_s=10)

    assert posted(fake, "/orgs/kiln-apps/repos") == 1
    assert posted(fake, "/user/repos") == 0
    assert fake.repo("kiln-bot", "demo-app") is None
    assert repo_of(fake, "demo-app", owner="kiln-apps").files() == ROUND_1
    assert publication.repo_url.endswith("/kiln-apps/demo-app")
    pages = api_get(fake, "/repos/kiln-apps/demo-app/pages").json()
    assert publication.pages_url == pages["html_url"]
    assert httpx.get(publication.pages_url).content == ROUND_1["index.html"]
    assert publisher.current_files("demo-app") == ROUND_1


def test_the_users_own_name_as_owner_creates_under_the_user(
    fake: FakeGitHub, sleeps: list[float]
) -> None:
    publisher = GitHubPublisher(fake.url, TOKEN, owner="Kiln-Bot", sleep=sleeps.append)

    publisher.publish("demo-app", ROUND_1, message="Round 1")

    assert posted(fake, "/user/repos") == 1  # logins ignore case
    assert repo_of(fake, "demo-app").files() == ROUND_1


def test_an_unknown_org_fails_with_githubs_message(fake: FakeGitHub, sleeps: list[float]) -> None:
    publisher = GitHubPublisher(fake.url, TOKEN, owner="no-such-org", sleep=sleeps.append)

    with pytest.raises(PublishFailed, match="404 to POST /orgs/no-such-org/repos: Not Found"):
        publisher.publish("demo-app", ROUND_1, message="Round 1")


def test_an_errored_build_fails_the_wait(fake: FakeGitHub, publisher: GitHubPublisher) -> None:
    fake.build_error = "A file was included in index.html that does not exist."
    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    with pytest.raises(PublishFailed, match=r"build of \w{7} failed: A file was included"):
        publisher.wait_until_live(publication, timeout_s=10)


def test_a_build_that_never_ends_times_out(fake: FakeGitHub) -> None:
    fake.builds_before_built = 1_000_000
    publisher = GitHubPublisher(fake.url, TOKEN, sleep=lambda _: time.sleep(0.02))
    publication = publisher.publish("demo-app", ROUND_1, message="Round 1")

    started = time.monotonic()
    with pytest.raises(PublishFailed, match=r"did not build .* within 0.3 s \(last: building\)"):
        publisher.wait_until_live(publication, timeout_s=0.3)

    assert time.monotonic() - started < 5
    publisher.close()


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("job_01HZX9", "job_01HZX9"),
        ("v1.2_beta-3", "v1.2_beta-3"),
        ("My Task: build it!", "My-Task-build-it-"),
        ("café/été", "caf-t-"),
        ("a//b  c", "a-b-c"),
    ],
)
def test_repo_name_keeps_allowed_characters_and_collapses_others(task: str, expected: str) -> None:
    assert repo_name(task) == expected


@pytest.mark.parametrize("task", ["", ".", "..", "a" * 101, "a" * 300, "é" * 3])
def test_repo_name_is_always_valid(task: str) -> None:
    name = repo_name(task)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name)
    assert name not in {".", ".."}


def test_repo_name_keeps_long_and_dot_ids_apart() -> None:
    assert repo_name("a" * 150) != repo_name("a" * 151)
    assert repo_name("a" * 150).startswith("a" * 80)
    assert repo_name(".") != repo_name("..")


def test_the_fake_stores_objects_under_gits_own_shas(fake: FakeGitHub) -> None:
    fake.create_repo("kiln-bot", "shas")
    blob = httpx.post(
        f"{fake.url}/repos/kiln-bot/shas/git/blobs",
        json={"content": "hello\n", "encoding": "utf-8"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert blob.status_code == 201
    assert blob.json()["sha"] == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    assert int(blob.headers["x-ratelimit-remaining"]) < int(blob.headers["x-ratelimit-limit"])


def test_the_fake_runs_as_its_own_process() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.github", "--port", str(port), "--token", TOKEN],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        answer = httpx.get(
            f"http://127.0.0.1:{port}/user", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.json()["login"] == "kiln-bot"
        assert answer.headers["x-ratelimit-resource"] == "core"
    finally:
        process.terminate()
        process.wait(timeout=10)
