"""`kiln`: run the stack, its parts, and the operator's tasks."""

import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import keys as keys_cli
from shared.config import get_settings
from shared.logs import configure_logging

app = typer.Typer(help="Kiln: a queue-backed job engine for LLM work.", no_args_is_help=True)
app.add_typer(keys_cli.app, name="keys")

ADMIN_KEY_FILE = "admin.key"


def _admin_key(data_dir: Path) -> tuple[str, str]:
    """KILN_ADMIN_API_KEY, or one kept in the data dir; returns the key and where it is."""
    settings = get_settings()
    if settings.admin_api_key is not None:
        return settings.admin_api_key.get_secret_value(), "KILN_ADMIN_API_KEY"
    path = data_dir / ADMIN_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text("kiln_" + secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
) -> None:
    """Run everything on this machine: API, workers, reconciler, Flower (and Redis if none)."""
    from shared import migrate
    from shared.cli.stack import Stack

    settings = get_settings()
    configure_logging(settings.log_level)
    migrate.upgrade()
    key, key_source = _admin_key(settings.data_dir)
    flower_auth = settings.flower_basic_auth
    stack = Stack(
        data_dir=settings.data_dir,
        port=port,
        env={"KILN_ADMIN_API_KEY": key, "KILN_CALLBACK_ALLOW_PRIVATE": "true"},
        flower_port=None if no_flower else settings.flower_port,
        flower_auth=flower_auth.get_secret_value() if flower_auth else None,
    )
    if settings.redis_url:
        stack.env["KILN_REDIS_URL"] = settings.redis_url
    if settings.public_url:
        stack.env["KILN_PUBLIC_URL"] = settings.public_url
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stack.start()
    typer.echo(f"Kiln API      {stack.api_url}  (docs: {stack.api_url}/docs)")
    if not no_flower:
        typer.echo(f"Flower        http://127.0.0.1:{settings.flower_port}")
    typer.echo(f"Redis         {stack.env['KILN_REDIS_URL']}")
    typer.echo(f"Admin API key {key_source}")
    typer.echo("Webhooks to private addresses are allowed (KILN_CALLBACK_ALLOW_PRIVATE=true).")
    typer.echo("Ctrl-C stops everything.")
    try:
        stack.supervise(stop)
    finally:
        typer.echo("stopping…")
        stack.stop()


@app.command()
def demo(
    prompt: Annotated[str, typer.Option(help="What to ask.")] = "Why is the sky blue?",
) -> None:
    """Start a throwaway stack, run one generate job, stream its tokens, and stop."""
    from shared.cli.demo import run_demo

    sys.exit(run_demo(prompt))


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = "gpu,io,callbacks",
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    name: Annotated[str, typer.Option(help="Celery node name.")] = "kiln@%h",
    pool: Annotated[
        str, typer.Option(help="prefork (processes) or threads (for network-bound queues).")
    ] = "prefork",
) -> None:
    """Run one Celery worker consuming the given queues."""
    from workers.app import app as celery

    names = [queue.strip() for queue in queues.split(",") if queue.strip()]
    if "gpu" in names:
        concurrency = 1  # one inference at a time per GPU
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "-n", name, "-O", "fair"]
    argv += ["-P", pool]
    argv += ["--without-mingle", "--without-gossip", "-l", get_settings().log_level]
    celery.worker_main(argv)


@app.command()
def reconciler() -> None:
    """Run the reconciler: re-publish lost jobs and retry jobs whose worker died."""
    from workers.reconciler import run_forever

    configure_logging(get_settings().log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_forever(stop)


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    from shared import migrate as migrations

    migrations.upgrade()
    typer.echo("database is up to date")
