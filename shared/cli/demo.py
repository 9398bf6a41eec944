"""`kiln demo`: a throwaway stack, one generate job streamed to the terminal, then a clean stop."""

import secrets
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from shared import migrate
from shared.cli.client import ClientError, KilnClient
from shared.cli.stack import Stack
from shared.config import get_settings
from shared.embedded_redis import free_port

READY_TIMEOUT_S = 60.0


def _pick_provider(console: Console) -> dict[str, str]:
    """Ollama with a model it has, when it answers; otherwise the template provider."""
    settings = get_settings()
    try:
        tags = httpx.get(f"{settings.ollama_url}/api/tags", timeout=1.0).json()
        models = [model["name"] for model in tags.get("models", [])]
    except (httpx.HTTPError, ValueError, KeyError):
        models = []
    if models:
        model = settings.default_model if settings.default_model in models else models[0]
        console.print(f"[bold]Provider:[/] Ollama at {settings.ollama_url}, model {model}")
        return {"KILN_LLM_PROVIDER": "ollama", "KILN_DEFAULT_MODEL": model}
    console.print(
        f"[bold]Provider:[/] template (no Ollama with a model answered at {settings.ollama_url})"
    )
    return {"KILN_LLM_PROVIDER": "template"}


def _wait_ready(client: KilnClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client.call("GET", "/readyz")
            return
        except ClientError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the stack did not become ready in time")


def run_demo(prompt: str) -> int:
    """Run the demo; returns the exit code."""
    console = Console()
    data_dir = Path(tempfile.mkdtemp(prefix="kiln-demo-"))
    admin_key = "kiln_" + secrets.token_urlsafe(24)
    env = {
        "KILN_DATA_DIR": str(data_dir),
        "KILN_DATABASE_URL": f"sqlite:///{data_dir / 'kiln.db'}",
        "KILN_ADMIN_API_KEY": admin_key,
        "KILN_CALLBACK_ALLOW_PRIVATE": "true",
        "KILN_LOG_LEVEL": "WARNING",
        **_pick_provider(console),
    }
    stack = Stack(
        data_dir=data_dir, port=free_port(), env=env, own_redis=True, log_dir=data_dir / "logs"
    )
    console.print(f"[dim]Throwaway data dir {data_dir}; webhooks to private addresses allowed.[/]")
    try:
        migrate.upgrade(env["KILN_DATABASE_URL"])
        with KilnClient(stack.api_url, admin_key) as client:
            with console.status("starting Kiln (API, workers, reconciler, embedded Redis)…"):
                stack.start()
                _wait_ready(client)
            return _run_job(console, client, prompt)
    except (RuntimeError, ClientError) as exc:
        console.print(f"[red]Demo failed:[/] {exc}")
        for log_file in sorted((data_dir / "logs").glob("*.log")):
            console.print(f"[dim]--- {log_file.name} (last lines)[/]")
            console.print("\n".join(log_file.read_text(errors="replace").splitlines()[-15:]))
        return 1
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _run_job(console: Console, client: KilnClient, prompt: str) -> int:
    started = time.perf_counter()
    job = client.call("POST", "/v1/jobs", json={"kind": "generate", "input": {"prompt": prompt}})
    console.print(f"[bold]Job[/] {job['id']} queued. [bold]Prompt:[/] {prompt}\n")
    final: dict[str, object] = {}
    for event in client.job_events(job["id"]):
        if event.event == "token":
            console.print(event.data["delta"], end="", soft_wrap=True, highlight=False)
        elif event.ends_job:
            final = event.data
    elapsed = time.perf_counter() - started
    console.print()
    if final.get("status") != "succeeded":
        console.print(f"\n[red]Job {final.get('status')}:[/] {final.get('error')}")
        return 1
    result = final["result"]
    assert isinstance(result, dict)
    console.print(
        f"\n[green]Succeeded[/] in {elapsed:.2f}s via {result['provider']} "
        f"({result['model']}): {result['eval_count']} tokens."
    )
    return 0
