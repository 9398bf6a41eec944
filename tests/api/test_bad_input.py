"""Bad requests get the one error shape and leave nothing behind."""

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Kiln

ONE_DATABASE = True  # refused before any database write


def _assert_nothing_enqueued(kiln: Kiln, key: str) -> None:
    assert kiln.client(key).get("/v1/jobs").json()["data"] == []
    assert kiln.redis.llen("gpu") == 0
    assert kiln.redis.scard("kiln:enqueued") == 0


@pytest.fixture
def key(kiln: Kiln) -> str:
    return kiln.new_key()


def test_malformed_json(kiln: Kiln, key: str) -> None:
    response = kiln.client(key).post(
        "/v1/jobs",
        content=b'{"kind": "generate", "input": {',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    _assert_nothing_enqueued(kiln, key)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "generate", "input": {"prompt": 5}}, "input.prompt"),
        ({"kind": "generate", "input": {}}, "input.prompt"),
        ({"kind": "generate", "input": {"prompt": "x", "options": []}}, "input.options"),
        ({"kind": "generate", "input": "text"}, "input"),
        ({"kind": "generate"}, "input"),
        ({"kind": "generate", "input": {"prompt": "x"}, "webhook_url": "ftp://x"}, "webhook_url"),
        ({"kind": "teleport", "input": {}}, "kind"),
    ],
)
def test_invalid_fields_are_named(
    kiln: Kiln, key: str, body: dict[str, object], field: str
) -> None:
    response = kiln.client(key).post("/v1/jobs", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith(f"{field}:")
    assert error["details"][0]["field"] == field
    _assert_nothing_enqueued(kiln, key)


def test_an_oversized_body_is_refused(kiln: Kiln, key: str) -> None:
    huge = {"kind": "generate", "input": {"prompt": "x" * 2_000_000}}

    response = kiln.client(key).post("/v1/jobs", json=huge)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    _assert_nothing_enqueued(kiln, key)


def test_an_oversized_chunked_body_is_refused(kiln: Kiln, key: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "generate", "input": {"prompt": "'
        for _ in range(40):
            yield b"y" * 65_536
        yield b'"}}'

    response = httpx.post(
        f"{kiln.url}/v1/jobs",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )

    assert response.status_code == 413
    _assert_nothing_enqueued(kiln, key)


def test_unknown_routes_and_methods_use_the_error_shape(kiln: Kiln, key: str) -> None:
    missing = kiln.client(key).get("/v1/nothing-here")
    wrong_method = kiln.client(key).delete("/v1/jobs")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_an_unknown_job_is_404(kiln: Kiln, key: str) -> None:
    response = kiln.client(key).get("/v1/jobs/does-not-exist")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_request_id_is_echoed_or_made(kiln: Kiln, key: str) -> None:
    given = kiln.client(key).get("/v1/jobs", headers={"X-Request-ID": "trace-123"})
    made = kiln.client(key).get("/v1/jobs")

    assert given.headers["x-request-id"] == "trace-123"
    assert len(made.headers["x-request-id"]) == 32
