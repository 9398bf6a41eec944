"""Security: no secret leaks into anything a run leaves behind, and no key reaches another key's
jobs through any route."""

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, create_engine, select

from api.main import create_app
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver, receiving
from tests.harness import Kiln

TASK_SECRET = "task-secret-Zq81vXw0pL"
GITHUB_TOKEN = "github_pat_11AAAAtestTOKENdoNotLeak0"
WEBHOOK_SECRET = "whsec_ZmFsbGJhY2stc2VjcmV0LWZvci10ZXN0cw=="
FLOWER_AUTH = "ops:flower-pass-Hq2"
GUESSES = 5  # invalid keys an address may send a minute
# Columns that hold a secret by design (the key's own signing secret, kept to sign with).
SECRET_COLUMNS = {("api_keys", "webhook_secret")}


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_TASK_SECRET": TASK_SECRET,
        "KILN_GITHUB_TOKEN": GITHUB_TOKEN,
        "KILN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "KILN_FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "KILN_CALLBACK_ALLOW_PRIVATE": "true",
        "KILN_AUTH_FAILURES_PER_MINUTE": str(GUESSES),
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def _brief(evaluation_url: str) -> dict[str, Any]:
    return {
        "email": "student@example.com",
        "secret": TASK_SECRET,
        "task": "leak-check",
        "round": 1,
        "nonce": "n-leak",
        "brief": "A page that says hello.",
        "checks": ["Page says hello"],
        "evaluation_url": evaluation_url,
        "attachments": [],
    }


def _submit(kiln: Kiln, key: str, prompt: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "generate", "input": {"prompt": prompt}, **fields}
    response = kiln.client(key).post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _everything_stored(database_url: str) -> str:
    """Every row of every table, as text, but for the columns that hold secrets by design."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    metadata = MetaData()
    metadata.reflect(engine)
    rows: list[str] = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            columns = [c for c in table.columns if (table.name, c.name) not in SECRET_COLUMNS]
            rows += [repr(tuple(row)) for row in connection.execute(select(*columns))]
    engine.dispose()
    return "\n".join(rows)


def _everything_in_redis(kiln: Kiln) -> str:
    found: list[str] = []
    for name in kiln.redis.scan_iter(count=500):
        kind = kiln.redis.type(name)
        if kind == b"string":
            found.append(repr(kiln.redis.get(name)))
        elif kind == b"stream":
            found.append(repr(kiln.redis.xrange(name)))
        elif kind == b"list":
            found.append(repr(kiln.redis.lrange(name, 0, -1)))
        elif kind == b"hash":
            found.append(repr(kiln.redis.hgetall(name)))
        elif kind == b"set":
            found.append(repr(kiln.redis.smembers(name)))
    return "\n".join(found)


def test_no_secret_appears_in_logs_results_errors_deliveries_metrics_or_openapi(
    kiln: Kiln, receiver: Receiver
) -> None:
    key = kiln.new_key("leaky")
    own_secret = kiln.client(key).get("/v1/webhook-secret").json()["secret"]
    client = kiln.client(key)
    produced: list[str] = []

    job = _submit(kiln, key, "keep it secret", webhook_url=receiver.url)
    produced.append(repr(kiln.wait_for(key, job["id"])))
    failing = kiln.submit(key, "x", model="no-such-model")
    produced.append(repr(kiln.wait_for(key, failing["id"])))
    assert "model_not_found" in produced[-1]
    brief = httpx.post(f"{kiln.url}/api-endpoint", json=_brief(receiver.url), timeout=30)
    produced.append(brief.text)
    produced.append(repr(kiln.wait_for(kiln.admin_key, brief.json()["job_id"], timeout=120)))
    receiver.wait_for(1)
    for bad in ("Bearer " + key + "x", "Bearer " + TASK_SECRET, "Basic " + FLOWER_AUTH):
        produced.append(httpx.get(f"{kiln.url}/v1/jobs", headers={"Authorization": bad}).text)
    produced.append(httpx.post(f"{kiln.url}/api-endpoint", json={"secret": "no"}).text)
    for path in ("/v1/jobs", "/v1/deliveries", f"/v1/jobs/{job['id']}/deliveries"):
        produced.append(client.get(path).text)
    produced.append(httpx.get(f"{kiln.url}/metrics").text)
    produced.append(httpx.get(f"{kiln.url}/openapi.json").text)
    produced.append(_everything_stored(kiln.stack.env["KILN_DATABASE_URL"]))
    produced.append(_everything_in_redis(kiln))
    logs = sorted((kiln.stack.data_dir / "logs").glob("*.log"))
    assert logs
    produced += [log.read_text(errors="replace") for log in logs]
    everything = "\n".join(produced)

    secrets = {
        "the API key": key,
        "the admin key": kiln.admin_key,
        "the task secret": TASK_SECRET,
        "the GitHub token": GITHUB_TOKEN,
        "the fallback webhook secret": WEBHOOK_SECRET,
        "the key's webhook secret": own_secret,
        "Flower's password": FLOWER_AUTH.split(":")[1],
    }
    leaked = {name for name, secret in secrets.items() if secret in everything}
    assert leaked == set()
    assert len(everything) > 10_000  # the run really produced logs, rows and documents


def _job_routes() -> list[tuple[str, str]]:
    paths = create_app().openapi()["paths"]
    return [
        (method.upper(), path)
        for path, methods in paths.items()
        for method in methods
        if "{job_id}" in path
    ]


def test_every_job_route_keeps_other_keys_out(kiln: Kiln, receiver: Receiver) -> None:
    owner, stranger = kiln.new_key("owner"), kiln.new_key("stranger")
    job = _submit(kiln, owner, "mine", webhook_url=receiver.url)
    kiln.wait_for(owner, job["id"])
    deliveries = kiln.client(owner).get(f"/v1/jobs/{job['id']}/deliveries").json()["data"]
    routes = _job_routes()
    assert len(routes) >= 5  # get, cancel, events, deliveries, redeliver at least

    answers = {}
    for method, template in routes:
        path = template.replace("{job_id}", job["id"])
        path = re.sub(r"\{delivery_id\}", deliveries[0]["id"], path)
        answers[f"{method} {template}"] = kiln.client(stranger).request(method, path).status_code

    assert answers == dict.fromkeys(answers, 404)
    assert kiln.client(owner).get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    listed = kiln.client(stranger).get("/v1/jobs").json()["data"]
    assert job["id"] not in {item["id"] for item in listed}
    failed = kiln.client(stranger).get("/v1/deliveries").json()["data"]
    assert all(item["job_id"] != job["id"] for item in failed)


def _from(address: str, kiln: Kiln, key: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=kiln.url, transport=transport) as client:
        return client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})


def test_an_address_guessing_keys_is_refused_even_a_valid_key(kiln: Kiln) -> None:
    valid = kiln.new_key("guessed")
    if 60 - time.time() % 60 < 15:  # all the guesses must fall in one minute
        time.sleep(60 - time.time() % 60)

    answers = [_from("127.0.0.3", kiln, f"kiln_wrong{n}").status_code for n in range(GUESSES)]
    refused = _from("127.0.0.3", kiln, valid)

    assert answers == [401] * GUESSES
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert _from("127.0.0.4", kiln, valid).status_code == 200  # other addresses are not
