"""Model management on a real stack: pulls and deletes as jobs on the GPU worker against the fake
Ollama, the built-in model protected, and the active model switched and kept in the database."""

from sqlmodel import Session

from api.service import ACTIVE_MODEL
from shared import crud
from shared.db import make_engine
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln, eventually

BUILTIN = "llama3.2:1b"  # KILN_DEFAULT_MODEL's default, the fake Ollama's only model at start
SERVED_TIMEOUT_S = 30.0  # the registry learns of a pull or delete on the worker's next beat


def served_models(kiln: Kiln) -> list[str]:
    response = kiln.admin.get("/v1/models")
    assert response.status_code == 200, response.text
    return [model["id"] for model in response.json()["data"]]


def wait_until_served(kiln: Kiln, model: str, served: bool = True) -> None:
    eventually(
        lambda: (model in served_models(kiln)) == served,
        f"{model} served={served}",
        timeout=SERVED_TIMEOUT_S,
    )


def stored_active_model(kiln: Kiln) -> str | None:
    engine = make_engine(kiln.stack.env["KILN_DATABASE_URL"])
    try:
        with Session(engine) as session:
            return crud.get_runtime_setting(session=session, name=ACTIVE_MODEL)
    finally:
        engine.dispose()


def pull(kiln: Kiln, model: str) -> dict[str, object]:
    response = kiln.admin.post("/v1/models/pull", json={"model": model})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "model_pull"
    assert response.headers["Location"] == job["urls"]["get"]
    return dict(job)


def test_a_pull_reports_its_progress_and_the_model_becomes_servable(kiln: Kiln) -> None:
    job = pull(kiln, "qwen2.5:0.5b")

    events = kiln.events(kiln.admin_key, str(job["id"]))

    downloads = [e.data for e in events if e.event == "progress" and "percent" in e.data]
    percents = [d["percent"] for d in downloads]
    assert percents == sorted(set(percents))
    assert len(percents) == 5  # the fake's five download lines, each 10 points past the last
    assert (percents[0], percents[-1]) == (0, 100)
    assert downloads[-1]["completed"] == downloads[-1]["total"]
    assert {d["step"] for d in downloads} == {"pulling"}
    statuses = [e.data["status"] for e in events if e.event == "progress"]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    final = events[-1].data
    assert final["status"] == "succeeded"
    assert final["result"]["model"] == "qwen2.5:0.5b"
    wait_until_served(kiln, "qwen2.5:0.5b")


def test_a_model_the_registry_lacks_fails_the_pull(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.registry = {"llama3.2:1b"}
    job = pull(kiln, "no-such-model:7b")

    done = kiln.wait_for(kiln.admin_key, str(job["id"]))

    assert done["status"] == "failed"
    assert done["error"]["code"] == "model_not_found"


def test_only_the_admin_manages_models(kiln: Kiln) -> None:
    client = kiln.client(kiln.new_key("not-admin"))
    attempts = [
        client.post("/v1/models/pull", json={"model": "phi3:mini"}),
        client.delete("/v1/models/qwen2.5:0.5b"),
        client.put("/v1/models/active", json={"model": BUILTIN}),
        client.post(f"/api/v1/models/switch/{BUILTIN}"),
    ]
    for response in attempts:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    assert client.get("/v1/models/active").json()["model"] == BUILTIN


def test_the_builtin_model_can_never_be_deleted(kiln: Kiln) -> None:
    response = kiln.admin.delete(f"/v1/models/{BUILTIN}")
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "builtin_model"
    assert BUILTIN in served_models(kiln)


def test_deleting_a_model_no_backend_has_is_not_found(kiln: Kiln) -> None:
    response = kiln.admin.delete("/v1/models/never-pulled:1b")
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["details"]["job"]["kind"] == "model_delete"


def test_the_active_model_is_switched_used_by_new_jobs_and_kept(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    model = "phi3:mini"
    assert kiln.wait_for(kiln.admin_key, str(pull(kiln, model)["id"]))["status"] == "succeeded"
    wait_until_served(kiln, model)

    switched = kiln.admin.put("/v1/models/active", json={"model": model})
    assert switched.status_code == 200, switched.text
    assert switched.json() == {"model": model, "builtin_model": BUILTIN}
    key = kiln.new_key("user")
    job = kiln.wait_for(key, str(kiln.submit(key, "which model")["id"]))
    assert job["input"]["model"] == model
    assert job["result"]["model"] == model
    assert fake_ollama.requests[-1]["model"] == model
    in_use = kiln.admin.delete(f"/v1/models/{model}")
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "active_model"

    assert stored_active_model(kiln) == model  # what every API process, and a restarted one, reads
    assert kiln.client(key).get("/v1/models/active").json()["model"] == model

    back = kiln.admin.post(f"/api/v1/models/switch/{BUILTIN}")
    assert back.status_code == 200, back.text
    assert back.json()["active_model"] == BUILTIN
    deleted = kiln.admin.delete(f"/v1/models/{model}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["result"]["status"] == "deleted"
    wait_until_served(kiln, model, served=False)


def test_switching_to_a_model_no_worker_serves_is_not_found(kiln: Kiln) -> None:
    for response in (
        kiln.admin.put("/v1/models/active", json={"model": "never-pulled:1b"}),
        kiln.admin.post("/api/v1/models/switch/never-pulled:1b"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"
