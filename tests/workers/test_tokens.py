"""Token events on their way to a job's stream: Redis going away loses tokens from the live
stream, never the job that produces them."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import keys
from shared.broker import get_redis, reset_redis
from shared.config import get_settings
from tests.conftest import own_redis
from workers.tokens import TokenSender

ONE_DATABASE = True  # no database here


@pytest.fixture
def redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's Redis: one of the test's own."""
    with own_redis(tmp_path / "redis") as server:
        monkeypatch.setenv("KILN_REDIS_URL", server.url)
        get_settings.cache_clear()
        reset_redis()
        yield server.url
        reset_redis()
    get_settings.cache_clear()


def _tokens(job_id: str) -> list[str]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = get_redis().xrange(  # type: ignore[assignment]
        keys.job_events(job_id)
    )
    return [json.loads(fields[b"data"])["delta"] for _, fields in entries]


def test_tokens_reach_the_stream_in_order(redis_url: str) -> None:
    with TokenSender("job-a") as tokens:
        for word in ("one", "two", "three"):
            tokens.send(word)

    assert _tokens("job-a") == ["one", "two", "three"]


def test_a_flush_while_redis_is_away_is_logged_and_the_job_goes_on(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KILN_REDIS_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    get_settings.cache_clear()
    reset_redis()

    with TokenSender("job-b") as tokens:
        tokens.send("lost")  # the first token goes out at once, and finds no Redis

    assert "could not send 1 tokens of job job-b to its stream" in caplog.text
