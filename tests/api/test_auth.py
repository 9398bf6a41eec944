"""API keys: who may do what."""

import os
import subprocess
import sys

import pytest
from sqlmodel import Session, create_engine

from shared import crud
from tests.harness import Kiln, eventually


def test_a_request_without_a_key_is_refused(kiln: Kiln) -> None:
    response = kiln.client().get("/v1/jobs")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_wrong_key_is_refused(kiln: Kiln) -> None:
    response = kiln.client("kiln_not-a-real-key").get("/v1/jobs")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "the API key is invalid or revoked"


def test_the_x_api_key_header_works_too(kiln: Kiln) -> None:
    key = kiln.new_key()
    job = kiln.submit(key)

    response = kiln.client().get(f"/v1/jobs/{job['id']}", headers={"X-API-Key": key})

    assert response.status_code == 200
    assert response.json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("POST", "/cancel"), ("GET", "/events")],
)
def test_a_key_cannot_touch_another_keys_job(kiln: Kiln, method: str, path: str) -> None:
    owner, stranger = kiln.new_key("a"), kiln.new_key("b")
    job = kiln.submit(owner)

    response = kiln.client(stranger).request(method, f"/v1/jobs/{job['id']}{path}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert job["id"] not in [j["id"] for j in kiln.client(stranger).get("/v1/jobs").json()["data"]]
    assert kiln.client(owner).get(f"/v1/jobs/{job['id']}").json()["status"] != "canceled"


def test_the_admin_sees_every_job(kiln: Kiln) -> None:
    job = kiln.submit(kiln.new_key())

    assert kiln.admin.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_a_revoked_key_stops_working_at_once(kiln: Kiln) -> None:
    created = kiln.admin.post("/v1/keys", json={"name": "temp"}).json()
    client = kiln.client(created["key"])
    assert client.get("/v1/jobs").status_code == 200

    revoked = kiln.admin.delete(f"/v1/keys/{created['id']}")

    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert client.get("/v1/jobs").status_code == 401
    listed = {key["id"]: key for key in kiln.admin.get("/v1/keys").json()}
    assert listed[created["id"]]["revoked_at"] is not None
    assert "key" not in listed[created["id"]]


def _kiln_command(kiln: Kiln, *argv: str) -> subprocess.CompletedProcess[str]:
    """A `kiln` command run by an operator beside the stack, on its database and Redis."""
    env = {**os.environ, **kiln.stack.env}
    command = [sys.executable, "-m", "shared.cli", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)


def test_a_key_revoked_from_the_command_line_stops_working_at_once(kiln: Kiln) -> None:
    created = kiln.admin.post("/v1/keys", json={"name": "temp"}).json()
    client = kiln.client(created["key"])
    assert client.get("/v1/jobs").status_code == 200  # now in the API process's cache

    _kiln_command(kiln, "keys", "revoke", created["id"])

    assert client.get("/v1/jobs").status_code == 401


def test_a_rotated_webhook_secret_is_read_back_at_once(kiln: Kiln) -> None:
    created = kiln.admin.post("/v1/keys", json={"name": "temp"}).json()
    client = kiln.client(created["key"])
    before = client.get("/v1/webhook-secret").json()["secret"]

    rotated = _kiln_command(kiln, "keys", "secret", created["id"], "--rotate").stdout.strip()

    assert rotated.startswith("whsec_")
    assert rotated != before
    assert client.get("/v1/webhook-secret").json()["secret"] == rotated


def test_keys_are_read_again_after_the_changes_channel_drops(kiln: Kiln) -> None:
    created = kiln.admin.post("/v1/keys", json={"name": "temp"}).json()
    client = kiln.client(created["key"])
    assert client.get("/v1/jobs").status_code == 200
    # Revoked behind Kiln's back: no change is announced, so the cached key still works ...
    with Session(create_engine(kiln.stack.env["KILN_DATABASE_URL"])) as session:
        assert crud.revoke_api_key(session=session, key_id=created["id"]) is not None
    assert client.get("/v1/jobs").status_code == 200

    # ... until the API loses its subscription: what it missed meanwhile is unknown, so the
    # cache starts empty again.
    assert kiln.redis.client_kill_filter(_type="pubsub") >= 1

    eventually(lambda: client.get("/v1/jobs").status_code == 401, "the key is refused")


def test_only_the_admin_manages_keys(kiln: Kiln) -> None:
    user = kiln.client(kiln.new_key())

    assert user.post("/v1/keys", json={"name": "x"}).status_code == 403
    assert user.get("/v1/keys").status_code == 403
    assert kiln.admin.delete("/v1/keys/key_missing").status_code == 404
