"""The local publisher: a bare git repository and a static site per app under Kiln's data dir,
served by the API's `/git` and `/pages` routes (`api.routes.sites`)."""

import fcntl
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from shared.exceptions import PublishFailed
from shared.publish.base import Publication

SITES_DIR = "sites"  # the publisher's root, under KILN_DATA_DIR
BRANCH = "refs/heads/main"
GIT_TIMEOUT_S = 60.0  # per git command: a site is small, so anything slower is stuck
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_SHA = re.compile(r"[0-9a-f]{40}")
_NO_SHA = "0" * 40  # update-ref's old value meaning "the branch must not exist yet"
# Exports and temporaries are named `.{name}@…`: no repo name starts with `.` or holds `@`, so
# they never collide with a site and the routes never serve them.
_SCRATCH = "@"
# A fixed identity and no user or system config: commits look the same on every host and no
# setting (signing, hooks, autocrlf) of whoever runs the worker changes what gets committed.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Kiln",
    "GIT_AUTHOR_EMAIL": "kiln@localhost",
    "GIT_COMMITTER_NAME": "Kiln",
    "GIT_COMMITTER_EMAIL": "kiln@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def valid_name(name: str) -> bool:
    """Whether `name` may name a repository: 1-100 of `A-Z a-z 0-9 . _ -`, not starting with `.`."""
    return _NAME.fullmatch(name) is not None


def repo_dir(root: Path, name: str) -> Path:
    """The bare repository of `name` under a sites root."""
    return root / "git" / f"{name}.git"


def site_dir(root: Path, name: str) -> Path:
    """The published site of `name`: a symlink to the export of its live commit."""
    return root / "pages" / name


class LocalPublisher:
    """Publishes to bare repositories, cloneable over git's dumb HTTP protocol, and static sites
    kept under `root`; URLs start with `public_url`, where the API serves them."""

    name = "local"

    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")

    def current_files(self, repo: str) -> dict[str, bytes] | None:
        """The files at the head of `repo`, or None if nothing was ever published to it."""
        git_dir = repo_dir(self.root, _checked_name(repo))
        if not git_dir.is_dir():
            return None
        head = _head(git_dir)
        return None if head is None else _read_tree(git_dir, head)

    def publish(self, repo: str, files: dict[str, bytes], *, message: str) -> Publication:
        """Commit exactly `files` on top of the head of `repo` (created if missing), then make
        that commit the live site."""
        _checked_name(repo)
        paths = _checked_paths(files)
        try:
            for part in ("git", "pages", "locks"):
                (self.root / part).mkdir(parents=True, exist_ok=True)
            with self._locked(repo):
                git_dir = self._ensure_repo(repo)
                export = self._commit_and_export(git_dir, repo, files, paths, message)
                self._go_live(repo, export)
        except OSError as exc:
            raise PublishFailed(f"could not publish {repo}: {exc}") from exc
        sha = export.name.rpartition(_SCRATCH)[2]
        return Publication(
            repo_url=f"{self.public_url}/git/{repo}.git",
            commit_sha=sha,
            pages_url=f"{self.public_url}/pages/{repo}/",
        )

    def wait_until_live(self, publication: Publication, *, timeout_s: float) -> None:
        """Check the site serves `publication`'s commit: `publish` exported it before returning,
        so there is nothing to wait for."""
        repo = publication.repo_url.rstrip("/").rpartition("/")[2].removesuffix(".git")
        live = self.live_commit(repo)
        if live != publication.commit_sha:
            raise PublishFailed(
                f"the site of {repo} serves {live or 'nothing'}, not {publication.commit_sha}"
            )

    def live_commit(self, repo: str) -> str | None:
        """The commit the site of `repo` serves, or None if it serves nothing."""
        site = site_dir(self.root, _checked_name(repo))
        try:
            target = os.readlink(site)
        except OSError:
            return None
        sha = target.rpartition(_SCRATCH)[2]
        return sha if _SHA.fullmatch(sha) and (site.parent / target).is_dir() else None

    @contextmanager
    def _locked(self, repo: str) -> Iterator[None]:
        """Hold `repo`'s lock: one round at a time per repository, across threads and processes."""
        # flock, not lockf: its locks belong to the open file, so threads exclude each other too.
        fd = os.open(self.root / "locks" / f"{repo}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ensure_repo(self, repo: str) -> Path:
        """The bare repository of `repo`, created if missing."""
        git_dir = repo_dir(self.root, repo)
        if git_dir.is_dir():
            return git_dir
        # Initialised aside and renamed into place, so a crash never leaves a half-made repo.
        scratch = git_dir.with_name(f".{repo}{_SCRATCH}init-{secrets.token_hex(4)}")
        try:
            _git("init", "--quiet", "--bare", "--initial-branch=main", str(scratch))
            scratch.rename(git_dir)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return git_dir

    def _commit_and_export(
        self, git_dir: Path, repo: str, files: Mapping[str, bytes], paths: list[str], message: str
    ) -> Path:
        """Write `files` to a new export dir, commit them on the branch and return the dir, which
        is named after the commit."""
        staging = site_dir(self.root, repo).with_name(
            f".{repo}{_SCRATCH}new-{secrets.token_hex(4)}"
        )
        staging.mkdir()
        try:
            for path in paths:
                target = staging / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(files[path])
            # The blobs are hashed from these very files, so the export is the commit's tree.
            tree = _write_tree(git_dir, [staging / path for path in paths], paths)
            parent = _head(git_dir)
            commit = ["commit-tree", tree, *(["-p", parent] if parent else [])]
            text = message.rstrip() + "\n"  # git's convention, as `git commit` would store it
            sha = _git(*commit, git_dir=git_dir, stdin=text.encode()).decode().strip()
            # The lock makes the old-value check redundant, unless a filesystem ignores flock.
            _git(
                "update-ref", "-m", "kiln publish", BRANCH, sha, parent or _NO_SHA, git_dir=git_dir
            )
            _git("update-server-info", git_dir=git_dir)  # the dumb protocol's index of refs
            return staging.rename(staging.with_name(f".{repo}{_SCRATCH}{sha}"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _go_live(self, repo: str, export: Path) -> None:
        """Point the site at `export` in one step, then drop exports no request can still use."""
        site = site_dir(self.root, repo)
        previous = os.readlink(site) if site.is_symlink() else None
        link = site.with_name(f".{repo}{_SCRATCH}link-{secrets.token_hex(4)}")
        link.symlink_to(export.name)
        # rename(2) over the old link: a request sees the old site or the new one, never neither.
        link.replace(site)
        # The previous export stays for requests that resolved the link just before the swap.
        keep = {export.name, previous}
        for entry in site.parent.iterdir():
            if entry.name.startswith(f".{repo}{_SCRATCH}") and entry.name not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def _checked_name(repo: str) -> str:
    if not valid_name(repo):
        raise PublishFailed(f"invalid repository name: {repo!r}")
    return repo


def _checked_paths(files: Mapping[str, bytes]) -> list[str]:
    """The paths of `files`, sorted; PublishFailed if one can't be a file of a tree and a site."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        if (
            any(part in ("", ".", "..") or part.lower() == ".git" for part in parts)
            or any(ord(char) < 32 or char == "\x7f" for char in path)  # hash-object reads lines
        ):
            raise PublishFailed(f"invalid file path: {path!r}")
        dirs.update("/".join(parts[:end]) for end in range(1, len(parts)))
    clashes = sorted(dirs & files.keys())
    if clashes:
        raise PublishFailed(f"both a file and a directory: {clashes[0]!r}")
    return sorted(files)


def _run(
    *args: str,
    git_dir: Path | None = None,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    command = ["git", *([f"--git-dir={git_dir}"] if git_dir else []), *args]
    # Drop inherited GIT_* variables (set when run from a hook, say): they would redirect git.
    environ = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    try:
        return subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            env={**environ, **_GIT_ENV, **(env or {})},
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PublishFailed(f"git {args[0]} took over {GIT_TIMEOUT_S:g}s") from exc


def _git(
    *args: str,
    git_dir: Path | None = None,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
) -> bytes:
    """The output of a git command; PublishFailed if it fails."""
    done = _run(*args, git_dir=git_dir, stdin=stdin, env=env)
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()
        raise PublishFailed(f"git {args[0]} failed: {error}")
    return done.stdout


def _head(git_dir: Path) -> str | None:
    """The commit at the branch's head, or None before the first one."""
    done = _run("rev-parse", "--verify", "--quiet", f"{BRANCH}^{{commit}}", git_dir=git_dir)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def _write_tree(git_dir: Path, sources: list[Path], paths: list[str]) -> str:
    """Store each file of `sources` as the blob at the same place in `paths`; return the tree."""
    listing = b"".join(os.fsencode(source) + b"\n" for source in sources)
    blobs = _git(
        "hash-object", "-w", "--no-filters", "--stdin-paths", git_dir=git_dir, stdin=listing
    )
    entries = b"".join(
        b"100644 %s\t%s\0" % (blob, os.fsencode(path))
        for blob, path in zip(blobs.split(), paths, strict=True)
    )
    # A throw-away index builds the nested trees, and no other round ever sees it.
    with tempfile.TemporaryDirectory(prefix="kiln-index-") as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        _git("update-index", "-z", "--index-info", git_dir=git_dir, stdin=entries, env=index)
        return _git("write-tree", git_dir=git_dir, env=index).decode().strip()


def _read_tree(git_dir: Path, commit: str) -> dict[str, bytes]:
    """Every file of `commit`'s tree, by path."""
    blobs: list[tuple[str, bytes]] = []
    for record in _git("ls-tree", "-r", "-z", commit, git_dir=git_dir).split(b"\0"):
        meta, _, name = record.partition(b"\t")
        fields = meta.split(b" ")  # mode, type, object
        if fields[1:2] == [b"blob"]:
            blobs.append((os.fsdecode(name), fields[2]))
    wanted = b"".join(blob + b"\n" for _, blob in blobs)
    contents = _git("cat-file", "--batch", git_dir=git_dir, stdin=wanted)
    files: dict[str, bytes] = {}
    offset = 0
    for path, _ in blobs:
        # Each answer is `<sha> blob <size>\n<content>\n`.
        header_end = contents.index(b"\n", offset)
        size = int(contents[offset:header_end].split(b" ")[2])
        files[path] = contents[header_end + 1 : header_end + 1 + size]
        offset = header_end + 1 + size + 1
    return files
