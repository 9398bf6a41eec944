"""LocalPublisher against real git: the commits, trees and exported sites it leaves on disk."""

import itertools
import os
import subprocess
import threading
from pathlib import Path

import pytest

from shared.exceptions import PublishFailed
from shared.publish.base import Publication, Publisher
from shared.publish.local import LocalPublisher, repo_dir, site_dir

URL = "http://kiln.test"
SITE = {
    "index.html": b"<!doctype html><h1>Round 1</h1>",
    "css/site.css": b"body { color: teal }",
    "README.md": b"# Demo\n",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "sites"


@pytest.fixture
def publisher(root: Path) -> LocalPublisher:
    return LocalPublisher(root, URL + "/")


def git(root: Path, *args: str, repo: str = "demo") -> str:
    """The output of a git command run against `repo`'s bare repository, with no user config."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    done = subprocess.run(
        ["git", f"--git-dir={repo_dir(root, repo)}", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout


def tree(root: Path, rev: str = "main") -> list[str]:
    return git(root, "ls-tree", "-r", "--name-only", rev).splitlines()


def exported(root: Path, repo: str = "demo") -> dict[str, bytes]:
    """The files the site of `repo` serves."""
    site = site_dir(root, repo)
    return {
        path.relative_to(site).as_posix(): path.read_bytes()
        for path in site.rglob("*")
        if path.is_file()
    }


def test_is_a_publisher(publisher: LocalPublisher) -> None:
    typed: Publisher = publisher
    assert typed.name == "local"


def test_first_round_creates_the_repo_with_one_commit_of_exactly_the_files(
    publisher: LocalPublisher, root: Path
) -> None:
    assert publisher.current_files("demo") is None

    publication = publisher.publish("demo", SITE, message="Round 1: a demo")

    assert publication == Publication(
        repo_url=f"{URL}/git/demo.git",
        commit_sha=git(root, "rev-parse", "main").strip(),
        pages_url=f"{URL}/pages/demo/",
    )
    assert git(root, "rev-list", "--count", "main").strip() == "1"
    assert (
        git(root, "log", "-1", "--format=%P|%an|%cn|%B", "main") == "|Kiln|Kiln|Round 1: a demo\n\n"
    )
    assert sorted(tree(root)) == sorted(SITE)
    assert git(root, "show", "main:index.html").encode() == SITE["index.html"]
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    # update-server-info ran: the dumb HTTP protocol's index of refs names the commit.
    info_refs = (repo_dir(root, "demo") / "info" / "refs").read_text()
    assert info_refs == f"{publication.commit_sha}\trefs/heads/main\n"
    assert exported(root) == SITE
    assert publisher.live_commit("demo") == publication.commit_sha
    publisher.wait_until_live(publication, timeout_s=1)


def test_next_round_is_one_commit_on_top_and_drops_deleted_files(
    publisher: LocalPublisher, root: Path
) -> None:
    first = publisher.publish("demo", SITE, message="Round 1")
    files = {"index.html": b"<h1>Round 2</h1>", "js/app.js": b"console.log(2)"}

    second = publisher.publish("demo", files, message="Round 2")

    assert git(root, "rev-list", "--parents", "main").splitlines() == [
        f"{second.commit_sha} {first.commit_sha}",
        first.commit_sha,
    ]
    assert sorted(tree(root)) == sorted(files)
    assert exported(root) == files
    assert not (site_dir(root, "demo") / "css").exists()
    assert publisher.current_files("demo") == files
    publisher.wait_until_live(second, timeout_s=1)
    with pytest.raises(PublishFailed, match="serves"):
        publisher.wait_until_live(first, timeout_s=1)


def test_an_unchanged_round_still_makes_one_commit(publisher: LocalPublisher, root: Path) -> None:
    first = publisher.publish("demo", SITE, message="Round 1")
    second = publisher.publish("demo", SITE, message="Round 2")

    assert second.commit_sha != first.commit_sha
    assert git(root, "rev-parse", "main^").strip() == first.commit_sha
    assert git(root, "rev-parse", "main^{tree}") == git(root, "rev-parse", "main^^{tree}")


def test_current_files_round_trips_binary_nested_and_unicode_paths(
    publisher: LocalPublisher, root: Path
) -> None:
    files = {
        "index.html": b"<h1>hi</h1>",
        "img/icons/all-bytes.bin": bytes(range(256)) * 3,
        "a/b/c/d/deep.txt": b"deep\r\nwith CRLF\n",
        "docs/été 2024.txt": "déjà vu".encode(),
        "empty.txt": b"",
    }
    publisher.publish("demo", files, message="Binary")

    assert publisher.current_files("demo") == files
    assert exported(root) == files
    assert git(root, "cat-file", "-t", "main:a/b/c").strip() == "tree"


def test_repos_are_independent(publisher: LocalPublisher, root: Path) -> None:
    publisher.publish("one", {"index.html": b"1"}, message="One")
    publisher.publish("one.two", {"index.html": b"1.2"}, message="One.two")

    assert publisher.current_files("one") == {"index.html": b"1"}
    assert publisher.current_files("one.two") == {"index.html": b"1.2"}
    assert publisher.current_files("two") is None


def test_only_the_live_and_the_previous_export_are_kept(
    publisher: LocalPublisher, root: Path
) -> None:
    publications = [
        publisher.publish("demo", {"index.html": str(n).encode()}, message=f"Round {n}")
        for n in range(4)
    ]

    exports = sorted(path.name for path in (root / "pages").iterdir() if path.name != "demo")
    assert exports == sorted(f".demo@{p.commit_sha}" for p in publications[-2:])


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "a/b", "a b", "x" * 101, "../etc", "ünï", "a@b"]
)
def test_invalid_repository_names_are_refused(publisher: LocalPublisher, name: str) -> None:
    with pytest.raises(PublishFailed, match="invalid repository name"):
        publisher.publish(name, SITE, message="Bad")
    with pytest.raises(PublishFailed, match="invalid repository name"):
        publisher.current_files(name)


@pytest.mark.parametrize("name", ["a", "x" * 100, "my-app_2.0", "-dash", "UPPER"])
def test_valid_repository_names_are_accepted(publisher: LocalPublisher, name: str) -> None:
    publisher.publish(name, {"index.html": b"ok"}, message="Ok")
    assert publisher.current_files(name) == {"index.html": b"ok"}


@pytest.mark.parametrize(
    "files",
    [
        {"/etc/passwd": b""},
        {"../outside": b""},
        {"a/../../outside": b""},
        {"a//b": b""},
        {"./a": b""},
        {"dir/": b""},
        {".git/config": b""},
        {"sub/.GIT/hooks/x": b""},
        {"line\nbreak": b""},
        {"": b""},
        {"a": b"", "a/b": b""},
    ],
    ids=repr,
)
def test_invalid_file_paths_are_refused(
    publisher: LocalPublisher, root: Path, files: dict[str, bytes]
) -> None:
    with pytest.raises(PublishFailed):
        publisher.publish("demo", files, message="Bad")
    assert publisher.current_files("demo") is None
    assert not (root.parent / "outside").exists()


def test_concurrent_rounds_of_one_repo_make_a_line_of_commits(
    publisher: LocalPublisher, root: Path
) -> None:
    rounds = 6
    start = threading.Barrier(rounds)
    published: list[Publication] = []
    errors: list[BaseException] = []

    def publish(n: int) -> None:
        files = {"index.html": f"<h1>{n}</h1>".encode(), f"round-{n}.txt": b"x"}
        start.wait()
        try:
            published.append(publisher.publish("demo", files, message=f"Round {n}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(rounds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    # No lost update: every round's commit is on the branch, each on top of the one before.
    history = git(root, "rev-list", "--parents", "main").splitlines()
    assert len(history) == rounds
    assert {line.split()[0] for line in history} == {p.commit_sha for p in published}
    for line, older in itertools.pairwise(history):
        assert line.split()[1:] == [older.split()[0]]
    head = history[0].split()[0]
    assert publisher.live_commit("demo") == head
    files = publisher.current_files("demo")
    assert files is not None
    assert exported(root) == files
    assert len(files) == 2


def test_wait_until_live_fails_when_nothing_was_published(publisher: LocalPublisher) -> None:
    publication = Publication(f"{URL}/git/demo.git", "0" * 40, f"{URL}/pages/demo/")
    with pytest.raises(PublishFailed, match="serves nothing"):
        publisher.wait_until_live(publication, timeout_s=1)
