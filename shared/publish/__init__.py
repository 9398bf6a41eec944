"""Publishers: where an app build's files become a repository and a live site."""

from functools import lru_cache

from shared.config import PublisherName, get_settings
from shared.publish.base import Publication, Publisher

__all__ = ["Publication", "Publisher", "get_publisher"]

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


@lru_cache
def get_publisher() -> Publisher:
    """The configured publisher, built once per process."""
    settings = get_settings()
    if settings.publisher == PublisherName.github:
        from shared.publish.github import GitHubPublisher

        token = settings.github_token.get_secret_value() if settings.github_token else ""
        return GitHubPublisher(settings.github_api_url, token, owner=settings.github_owner)
    from shared.publish.local import SITES_DIR, LocalPublisher

    public_url = (settings.public_url or DEFAULT_PUBLIC_URL).rstrip("/")
    return LocalPublisher(settings.data_dir / SITES_DIR, public_url)
