"""`kiln jobs`, `kiln tasks send` and `kiln generate` against a running stack: what they print
and the exit codes that follow each job's outcome."""

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from shared.cli.client import Event
from shared.cli.main import app
from shared.cli.watch import JobView
from shared.config import get_settings
from shared.embedded_redis import free_port
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # a client of the API, whose routes run on both databases

SECRET = "cli-brief-secret-0123456789"
SITE = {"files": [{"path": "index.html", "content": "<h1>Hello from the CLI</h1>"}]}

Run = Callable[..., Result]


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_TASK_SECRET": SECRET,
        "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    }


@pytest.fixture(scope="module")
def user_key(kiln: Kiln) -> str:
    return kiln.new_key("cli")


@pytest.fixture
def kiln_cli(
    kiln: Kiln, user_key: str, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """Run `kiln ARGS…` in-process with KILN_API_URL and KILN_API_KEY pointing at the stack."""

    def run(*args: str, key: str = user_key, url: str = kiln.url) -> Result:
        monkeypatch.setenv("KILN_API_URL", url)
        monkeypatch.setenv("KILN_API_KEY", key)
        get_settings.cache_clear()
        return CliRunner().invoke(app, list(args))

    yield run
    get_settings.cache_clear()


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_submit_and_watch_streams_the_job_and_exits_0(kiln_cli: Run) -> None:
    done = kiln_cli("jobs", "submit", "hello from the cli", "--watch")

    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    job_id = lines[0]
    assert lines[1] == f"job {job_id} (generate)"
    assert "status running (attempt 1)" in lines
    assert "Echo: hello from the cli" in lines
    assert lines[-1] == f"job {job_id} generate succeeded (attempt 1)"
    assert "\x1b[" not in done.stdout  # no terminal: plain lines, no escape codes


def test_get_prints_the_finished_job(kiln_cli: Run, kiln: Kiln, user_key: str) -> None:
    job = kiln.submit(user_key, "tell me")
    kiln.wait_for(user_key, job["id"])

    shown = kiln_cli("jobs", "get", job["id"])
    as_json = kiln_cli("jobs", "get", job["id"], "--json")

    assert shown.exit_code == 0, shown.output
    assert "status:   succeeded" in shown.stdout
    assert "response: Echo: tell me" in shown.stdout
    assert json.loads(as_json.stdout)["result"]["response"] == "Echo: tell me"


def test_a_failed_job_exits_1_with_its_error(kiln_cli: Run) -> None:
    submitted = kiln_cli("jobs", "submit", "hi", "--model", "nope:1b", "--json")
    job_id = json.loads(submitted.stdout)["id"]

    watched = kiln_cli("jobs", "watch", job_id)
    as_json = kiln_cli("jobs", "watch", job_id, "--json")

    assert watched.exit_code == 1, watched.output
    assert "failed (attempt 1)" in watched.stdout
    assert "(model_not_found)" in watched.stdout
    assert as_json.exit_code == 1
    events = _json_lines(as_json.stdout)
    assert events[-1]["event"] == "status"
    assert events[-1]["data"]["error"]["code"] == "model_not_found"  # type: ignore[index]


def test_cancel_then_watch_exits_3(
    kiln_cli: Run, kiln: Kiln, user_key: str, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.5
    job = kiln.submit(user_key, "a slow answer of many words")
    kiln.wait_for(user_key, job["id"], statuses=("running",))

    canceled = kiln_cli("jobs", "cancel", job["id"])
    watched = kiln_cli("jobs", "watch", job["id"])

    assert canceled.exit_code == 0, canceled.output
    assert canceled.stdout == f"canceled {job['id']}\n"
    assert watched.exit_code == 3, watched.output
    assert "canceled (attempt 1): the job was canceled (canceled)" in watched.stdout


def test_canceling_a_finished_job_exits_2_with_the_apis_message(
    kiln_cli: Run, kiln: Kiln, user_key: str
) -> None:
    job = kiln.submit(user_key, "quick")
    kiln.wait_for(user_key, job["id"])
    refusal = kiln.client(user_key).post(f"/v1/jobs/{job['id']}/cancel").json()["error"]

    refused = kiln_cli("jobs", "cancel", job["id"])

    assert refused.exit_code == 2
    assert refused.stderr == f"error: {refusal['message']} ({refusal['code']})\n"


def test_list_json_shows_the_keys_jobs_newest_first(kiln_cli: Run, kiln: Kiln) -> None:
    key = kiln.new_key("lister")
    ids = [kiln.submit(key, f"job {number}")["id"] for number in range(3)]

    listed = kiln_cli("jobs", "list", "--json", key=key)
    table = kiln_cli("jobs", "list", "--limit", "2", key=key)

    assert listed.exit_code == 0, listed.output
    assert [job["id"] for job in json.loads(listed.stdout)["data"]] == ids[::-1]
    assert table.exit_code == 0, table.output
    assert ids[2] in table.stdout
    assert ids[0] not in table.stdout
    assert table.stderr == f"more: --cursor {ids[1]}\n"


def test_generate_streams_the_tokens(kiln_cli: Run) -> None:
    done = kiln_cli("generate", "stream these words")
    as_json = kiln_cli("generate", "stream these words", "--json")

    assert done.exit_code == 0, done.output
    assert done.stdout == "Echo: stream these words\n"
    assert done.stderr == "ollama (llama3.2:1b), 4 tokens\n"
    assert json.loads(as_json.stdout)["done"]["response"] == "Echo: stream these words"


def test_generate_with_an_unknown_model_exits_1(kiln_cli: Run) -> None:
    failed = kiln_cli("generate", "hi", "--model", "nope:1b")

    assert failed.exit_code == 1
    assert failed.stderr.endswith("(model_not_found)\n")


def test_a_bad_key_exits_2_with_the_apis_message(kiln_cli: Run, kiln: Kiln) -> None:
    refusal = kiln.client("kiln_wrong").get("/v1/jobs").json()

    refused = kiln_cli("jobs", "list", key="kiln_wrong")
    as_json = kiln_cli("jobs", "list", "--json", key="kiln_wrong")

    assert refused.exit_code == 2
    assert refused.stderr == f"error: {refusal['error']['message']} (unauthorized)\n"
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == refusal


def test_no_kiln_exits_4_and_bad_usage_exits_2(kiln_cli: Run) -> None:
    unreachable = kiln_cli("generate", "hi", url=f"http://127.0.0.1:{free_port()}")
    usage = kiln_cli("jobs", "submit")

    assert unreachable.exit_code == 4
    assert unreachable.stderr.startswith("error: no answer from Kiln at http://127.0.0.1:")
    assert usage.exit_code == 2
    assert "give a PROMPT" in usage.stderr


def test_tasks_send_posts_the_brief_and_follows_the_build(
    kiln_cli: Run, kiln: Kiln, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    fake_ollama.replies = [json.dumps(SITE)]
    brief = {
        "email": "student@example.com",
        "secret": SECRET,
        "task": "cli-task-1",
        "round": 1,
        "nonce": "cli-1",
        "brief": "Say hello.",
        "checks": ["Page says hello"],
        "evaluation_url": "http://127.0.0.1:9/notify",
        "attachments": [],
    }
    path = tmp_path / "brief.json"
    path.write_text(json.dumps(brief))

    built = kiln_cli("tasks", "send", str(path), key=kiln.admin_key)

    assert built.exit_code == 0, built.output
    assert built.stdout.startswith("accepted: task cli-task-1 round 1, job ")
    assert "step generating\nstep committing\n" in built.stdout
    job_id = built.stdout.split("job ", 1)[1].split("\n", 1)[0]
    job = kiln.admin.get(f"/v1/jobs/{job_id}").json()
    assert f"pages_url: {job['result']['pages_url']}" in built.stdout
    site = httpx.get(job["result"]["pages_url"])
    assert "Hello from the CLI" in site.text


def test_tasks_send_with_a_wrong_secret_exits_2(kiln_cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "brief.json"
    path.write_text(json.dumps({"secret": "wrong", "task": "t"}))

    refused = kiln_cli("tasks", "send", str(path), "--json")

    assert refused.exit_code == 2
    assert json.loads(refused.stdout)["error"]["code"] == "forbidden"


def test_the_live_view_shows_the_steps_a_progress_bar_and_the_streamed_text() -> None:
    view = JobView({"id": "j1", "kind": "app", "status": "queued", "attempt": 1})
    events: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": "running", "attempt": 1}),
        ("progress", {"step": "generating", "round": 1}),
        ("token", {"delta": "<h1>"}),
        ("token", {"delta": "Hi</h1>"}),
        ("progress", {"step": "committing", "round": 1}),
    ]
    for number, (event, data) in enumerate(events):
        view.apply(Event(f"1-{number}", event, data))
    console = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)

    console.print(view)

    assert console.export_text().splitlines() == [
        "job j1 app running (attempt 1)",
        "  ✓ generating",
        "  ▸ committing",
        "━" * 8 + "╺" + "━" * 31 + " 1/5 steps",  # one of five steps done: 8 of 40 cells
        "<h1>Hi</h1>",
    ]
