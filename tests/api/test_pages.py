"""The jobs pages over real HTTP: sign-in, what a key sees, filters, live events, security
headers, and CORS limited to KILN_ALLOWED_ORIGINS."""

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from tests.fakes.receiver import Receiver, receiving
from tests.harness import Kiln

ALLOWED = "https://app.example.com"


@pytest.fixture(scope="module")
def kiln_env() -> dict[str, str]:
    return {
        "KILN_ALLOWED_ORIGINS": f"{ALLOWED}, https://other.example.com",
        "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def signed_in(kiln: Kiln, key: str) -> httpx.Client:
    """A client holding the pages' cookie for `key`."""
    client = kiln.client()
    response = client.post("/login", data={"key": key})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return client


def job_ids_listed(client: httpx.Client, query: str = "") -> list[str]:
    page = client.get("/" + query)
    assert page.status_code == 200, page.text
    return [
        line.split('data-job-id="')[1].split('"')[0]
        for line in page.text.splitlines()
        if 'data-job-id="' in line
    ]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_pages_send_a_visitor_without_a_key_to_the_sign_in_form(kiln: Kiln) -> None:
    client = kiln.client()

    for path in ("/", "/jobs/0123"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
    assert_error(client.get("/jobs/0123/events"), 401, "unauthorized")
    form = client.get("/login")
    assert form.status_code == 200
    assert 'name="key"' in form.text


def test_sign_in_keeps_the_key_in_a_strict_httponly_cookie_and_sign_out_drops_it(
    kiln: Kiln,
) -> None:
    client = kiln.client()
    wrong = client.post("/login", data={"key": "kiln_not-a-key"})
    assert wrong.status_code == 303
    assert wrong.headers["location"] == "/login?failed=true"
    assert "set-cookie" not in wrong.headers
    assert "invalid or revoked" in client.get(wrong.headers["location"]).text

    right = client.post("/login", data={"key": kiln.new_key("cookie")})
    cookie = right.headers["set-cookie"].lower()
    assert cookie.startswith("kiln_key=")
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" not in cookie  # Kiln is reached over plain http here
    assert client.get("/").status_code == 200

    out = client.post("/logout")
    assert out.status_code == 303
    assert "max-age=0" in out.headers["set-cookie"].lower()
    assert client.get("/").status_code == 303


def test_a_form_posted_from_another_site_is_refused(kiln: Kiln) -> None:
    response = kiln.client().post(
        "/login", data={"key": kiln.admin_key}, headers={"Origin": "https://evil.example"}
    )

    assert_error(response, 403, "forbidden")
    assert "set-cookie" not in response.headers


def test_the_list_shows_only_the_keys_jobs_filtered_with_duration_and_webhook_state(
    kiln: Kiln, receiver: Receiver
) -> None:
    mine, theirs = kiln.new_key("mine"), kiln.new_key("theirs")
    generated = kiln.submit(mine, "<script>alert(1)</script>")
    hooked = kiln.client(mine).post(
        "/v1/jobs",
        json={"kind": "generate", "input": {"prompt": "hook"}, "webhook_url": receiver.url},
    )
    assert hooked.status_code == 202, hooked.text
    chatted = kiln.client(mine).post(
        "/v1/jobs",
        json={"kind": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}},
    )
    assert chatted.status_code == 202, chatted.text
    other = kiln.submit(theirs, "not yours")
    ids = [generated["id"], hooked.json()["id"], chatted.json()["id"]]
    for job_id in ids:
        kiln.wait_for(mine, job_id)
    kiln.wait_for(theirs, other["id"])
    receiver.wait_for(1)
    client = signed_in(kiln, mine)

    assert job_ids_listed(client) == ids[::-1]
    assert job_ids_listed(client, "?kind=chat") == [ids[2]]
    assert job_ids_listed(client, "?status=succeeded&kind=generate") == ids[1::-1]
    assert job_ids_listed(client, "?status=failed") == []
    assert "No jobs match these filters" in client.get("/?status=failed").text
    assert other["id"] in job_ids_listed(signed_in(kiln, kiln.admin_key))
    deadline = time.monotonic() + 30
    while 'class="webhook">succeeded<' not in (page := client.get("/?kind=generate").text):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    row = page.split(f'data-job-id="{ids[1]}"')[1].split("</tr>")[0]
    assert 'class="webhook">succeeded<' in row
    assert re.search(r'class="duration">\d+\.\d\d s<', row), row

    assert_error(client.get(f"/jobs/{other['id']}"), 404, "not_found")
    assert_error(client.get(f"/jobs/{other['id']}/events"), 404, "not_found")
    detail = client.get(f"/jobs/{generated['id']}")
    assert detail.status_code == 200
    assert "<script>alert(1)</script>" not in detail.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
    assert 'data-finished="true"' in detail.text


def test_the_detail_page_streams_the_jobs_events_with_the_cookie(kiln: Kiln) -> None:
    key = kiln.new_key("events")
    job = kiln.submit(key, "one two three")
    client = signed_in(kiln, key)

    with connect_sse(client, "GET", f"/jobs/{job['id']}/events") as source:
        assert source.response.status_code == 200
        events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]

    assert [data["status"] for kind, data in events if kind == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    tokens = "".join(data["delta"] for kind, data in events if kind == "token")
    assert tokens.endswith("one two three")


def test_html_pages_carry_security_headers_and_json_does_not(kiln: Kiln) -> None:
    client = kiln.client()
    page = client.get("/login")

    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert client.get("/static/pages.js").headers["content-type"].startswith("text/javascript")
    assert "content-security-policy" not in client.get("/healthz").headers
    # Swagger UI runs inline code, so it keeps only the anti-framing policy.
    assert client.get("/docs").headers["content-security-policy"] == "frame-ancestors 'none'"


def test_cors_answers_only_the_allowed_origins(kiln: Kiln) -> None:
    client = kiln.client()
    preflight = {"Access-Control-Request-Method": "POST"}
    preflight["Access-Control-Request-Headers"] = "authorization, content-type"

    allowed = client.options("/v1/jobs", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in allowed.headers
    listed = client.get(
        "/v1/jobs", headers={"Origin": ALLOWED, "Authorization": f"Bearer {kiln.admin_key}"}
    )
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == ALLOWED

    denied = client.options("/v1/jobs", headers={"Origin": "https://evil.example", **preflight})
    assert_error(denied, 400, "cors_refused")
    assert "access-control-allow-origin" not in denied.headers
    plain = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers
