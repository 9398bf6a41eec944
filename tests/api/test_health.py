"""Liveness, readiness and the API docs."""

from tests.harness import Kiln


def test_healthz_and_readyz_when_everything_runs(kiln: Kiln) -> None:
    client = kiln.client()

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "database": True,
        "redis": True,
        "worker:gpu": True,
        "worker:io": True,
        "worker:callbacks": True,
    }


def test_readyz_names_a_queue_without_a_worker(kiln: Kiln) -> None:
    with kiln.held("worker-gpu"):
        response = kiln.client().get("/readyz")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert "worker:gpu" in error["message"]
    assert error["details"]["checks"]["worker:io"] is True


def test_openapi_docs_are_served(kiln: Kiln) -> None:
    client = kiln.client()

    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/keys"} <= set(paths)
