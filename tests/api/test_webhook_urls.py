"""Webhook URLs are checked when a job is submitted: no private targets, no odd schemes."""

import pytest

from tests.harness import Kiln

ONE_DATABASE = True  # URL checks at submit, before any database write


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://2130706433/",
        "http://localhost:8080/hook",
        "http://[fd00:ec2::254]/",
    ],
)
def test_private_targets_are_refused(kiln: Kiln, url: str) -> None:
    key = kiln.new_key()
    body = {"kind": "generate", "input": {"prompt": "x"}, "webhook_url": url}

    response = kiln.client(key).post("/v1/jobs", json=body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "webhook_url_blocked"
    assert error["message"].startswith("webhook_url:")
    assert kiln.client(key).get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"webhook_events": ["job.exploded"]}, "webhook_events.0"),
        ({"webhook_events": []}, "webhook_events"),
    ],
)
def test_malformed_webhook_fields_are_named(
    kiln: Kiln, webhook: dict[str, object], field: str
) -> None:
    key = kiln.new_key()
    body = {"kind": "generate", "input": {"prompt": "x"}, **webhook}

    response = kiln.client(key).post("/v1/jobs", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == field
