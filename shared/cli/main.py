"""`kiln`: run the stack, its parts, and the operator's tasks."""

import os
import secrets
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import jobs as jobs_cli
from shared.cli import keys as keys_cli
from shared.cli import tasks as tasks_cli
from shared.cli.exits import EXIT_CODES_HELP
from shared.cli.generate import generate
from shared.config import Environment, get_settings
from shared.logs import configure_logging

app = typer.Typer(help="Kiln: a queue-backed job engine for LLM work.", no_args_is_help=True)
app.add_typer(keys_cli.app, name="keys")
app.add_typer(jobs_cli.app, name="jobs")
app.add_typer(tasks_cli.app, name="tasks")
app.command(epilog=EXIT_CODES_HELP)(generate)

ADMIN_KEY_FILE = "admin.key"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # as shared.metrics names it; see _export_metrics


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


def _export_metrics() -> None:
    """With KILN_METRICS_PORT, serve the metrics of this process and the ones it starts (a
    worker's prefork children, the GPU launcher's workers): they all record into one directory,
    named before anything loads prometheus_client."""
    port = get_settings().metrics_port
    if not port:
        return
    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="kiln-metrics-")
    from shared import metrics

    metrics.serve(port)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
) -> None:
    """Run everything on this machine: API, workers, reconciler, Flower (and Redis if none)."""
    from shared import migrate
    from shared.cli.stack import Stack

    settings = get_settings()
    if not no_flower and (problem := settings.flower_problem()):
        raise SystemExit(f"Kiln cannot start: {problem}; or run with --no-flower")
    development = settings.env == Environment.development
    configure_logging(settings.log_level)
    migrate.upgrade()
    key, key_source = _admin_key(settings.data_dir)
    flower_auth = settings.flower_basic_auth
    stack = Stack(
        data_dir=settings.data_dir,
        port=port,
        env={"KILN_ADMIN_API_KEY": key},
        flower_port=None if no_flower else settings.flower_port,
        flower_auth=flower_auth.get_secret_value() if flower_auth else None,
    )
    if development:
        stack.env["KILN_CALLBACK_ALLOW_PRIVATE"] = "true"
    if settings.redis_url:
        stack.env["KILN_REDIS_URL"] = settings.redis_url
    if settings.public_url:
        stack.env["KILN_PUBLIC_URL"] = settings.public_url
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stack.start()
    except RuntimeError as exc:  # the embedded Redis: in use by another Kiln, or it failed
        stack.stop()
        raise SystemExit(f"Kiln cannot start: {exc}") from None
    docs = f"  (docs: {stack.api_url}/docs)" if development else ""
    typer.echo(f"Kiln API      {stack.api_url}{docs}")
    if not no_flower:
        typer.echo(f"Flower        http://127.0.0.1:{settings.flower_port}")
    typer.echo(f"Redis         {stack.env['KILN_REDIS_URL']}")
    typer.echo(f"Admin API key {key_source}")
    if development:
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
    gpus: Annotated[
        str | None,
        typer.Option(
            help="`all` (found with nvidia-smi) or GPU indexes such as 0,1: one worker process "
            "per GPU, pinned to it, named gpu<N>@host, on queues gpu and gpu.<N>; the options "
            "above are then set per GPU."
        ),
    ] = None,
) -> None:
    """Run one Celery worker consuming the given queues (or one per GPU with --gpus)."""
    _export_metrics()
    if gpus is not None:
        from workers.gpu import GPUSelectionError, parse_gpus, run_gpu_workers

        settings = get_settings()
        configure_logging(settings.log_level)
        try:
            indexes = parse_gpus(gpus)
        except GPUSelectionError as exc:
            typer.echo(f"kiln worker: {exc}", err=True)
            raise typer.Exit(2) from None
        run_gpu_workers(indexes, settings)
        return

    from celery.utils.nodenames import default_nodename, host_format

    from workers.app import app as celery

    names = [queue.strip() for queue in queues.split(",") if queue.strip()]
    if "gpu" in names:
        concurrency = 1  # one inference at a time per GPU
    # Started as Celery's `worker` command starts it, without loading Celery's command line
    # and its plugins (Flower, a REPL): a second of every worker's start-up.
    started = celery.Worker(
        hostname=host_format(default_nodename(name)),
        queues=names,
        concurrency=concurrency,
        pool_cls=pool,
        optimization="fair",
        without_mingle=True,
        without_gossip=True,
        loglevel=get_settings().log_level,
    )
    started.start()
    raise typer.Exit(started.exitcode or 0)


@app.command()
def reconciler() -> None:
    """Run the reconciler: re-publish lost jobs and retry jobs whose worker died."""
    from workers.reconciler import run_forever

    configure_logging(get_settings().log_level)
    _export_metrics()
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
