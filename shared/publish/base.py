"""The interface every publisher implements, and the values it exchanges."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Publication:
    """Where a round's files now live."""

    repo_url: str  # the repository's web (or clone) URL
    commit_sha: str  # the commit this round made
    pages_url: str  # the live site, as the host reports it


class Publisher(Protocol):
    """Turns a set of files into one commit of a repository and a deployed static site."""

    name: str

    def current_files(self, repo: str) -> dict[str, bytes] | None:
        """The files at the head of `repo`'s default branch, or None if there is no such repo."""
        ...

    def publish(self, repo: str, files: dict[str, bytes], *, message: str) -> Publication:
        """Commit exactly `files` (the whole tree) as one new commit on top of the current head,
        creating the repository (public) if needed, and make sure its site is enabled.

        Safe to call again after a crash: an existing repository is reused.
        """
        ...

    def wait_until_live(self, publication: Publication, *, timeout_s: float) -> None:
        """Return once the site serves `publication`'s commit; raise `PublishFailed` on time-out."""
        ...
