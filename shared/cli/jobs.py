"""`kiln jobs`: submit, read, list, cancel and watch jobs through the API at KILN_API_URL, with
KILN_API_KEY."""

import json
from typing import Annotated, Any

import typer

from shared.cli.client import KilnClient
from shared.cli.exits import EXIT_CODES_HELP, print_json, reported
from shared.cli.watch import follow
from shared.states import JobStatus

app = typer.Typer(
    help="Submit, read, list, cancel and watch jobs through Kiln's API.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON only (watch: JSON Lines of the job's events).")
]


def _request(prompt: str | None, model: str | None, body: typer.FileText | None) -> Any:
    """The body of `POST /v1/jobs`: the --body file as it is, or a generate job of PROMPT."""
    if body is not None:
        try:
            return json.loads(body.read())
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--body") from None
    if not prompt:
        raise typer.BadParameter("give a PROMPT, or a request with --body", param_hint="PROMPT")
    job_input = {"prompt": prompt, **({"model": model} if model else {})}
    return {"kind": "generate", "input": job_input}


@app.command(epilog=EXIT_CODES_HELP)
def submit(
    prompt: Annotated[str | None, typer.Argument(help="The prompt of a generate job.")] = None,
    model: Annotated[str | None, typer.Option(help="Its model (default: Kiln's).")] = None,
    body: Annotated[
        typer.FileText | None,
        typer.Option(help='A JSON file ("-": stdin) with the whole request, e.g. a chat job.'),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting again with it returns the same job.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow it until it ends.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a job and print its id (with --watch, follow it and exit with its outcome)."""
    request = _request(prompt, model, body)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with reported(as_json), KilnClient.from_settings() as client:
        job = client.call("POST", "/v1/jobs", json=request, headers=headers)
        if as_json:
            print_json(job)
        else:
            typer.echo(job["id"])
        if watch:
            raise typer.Exit(follow(client, job["id"], as_json=as_json))


@app.command()
def get(job_id: str, as_json: JsonOption = False) -> None:
    """Print a job: its status, timestamps, and its result or error."""
    with reported(as_json), KilnClient.from_settings() as client:
        job = client.call("GET", f"/v1/jobs/{job_id}")
    if as_json:
        print_json(job)
        return
    typer.echo(f"id:       {job['id']}\nkind:     {job['kind']}\nstatus:   {job['status']}")
    typer.echo(f"attempt:  {job['attempt']} of {job['max_attempts']}")
    for moment in ("created_at", "started_at", "finished_at"):
        if job[moment]:
            typer.echo(f"{moment.removesuffix('_at') + ':':<9} {job[moment]}")
    if job["error"]:
        typer.echo(f"error:    {job['error']['message']} ({job['error']['code']})")
    result = job["result"] or {}
    if "response" in result:
        typer.echo(f"response: {result['response']}")
    elif result:
        typer.echo(f"result:   {json.dumps(result)}")


@app.command("list")
def list_jobs(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs with this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The next_cursor of the last page.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the key's jobs, newest first."""
    params = {"status": status, "kind": kind, "limit": limit, "cursor": cursor}
    with reported(as_json), KilnClient.from_settings() as client:
        page = client.call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})
    if as_json:
        print_json(page)
        return
    typer.echo(f"{'id':<28}{'kind':<10}{'status':<11}{'attempt':<9}created")
    for job in page["data"]:
        row = f"{job['id']:<28}{job['kind']:<10}{job['status']:<11}{job['attempt']:<9}"
        typer.echo(row + job["created_at"])
    if page["next_cursor"]:
        typer.echo(f"more: --cursor {page['next_cursor']}", err=True)


@app.command()
def cancel(job_id: str, as_json: JsonOption = False) -> None:
    """Cancel a queued or running job (a finished one is refused: exit code 2)."""
    with reported(as_json), KilnClient.from_settings() as client:
        job = client.call("POST", f"/v1/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
    else:
        typer.echo(f"canceled {job['id']}")


@app.command(epilog=EXIT_CODES_HELP)
def watch(job_id: str, as_json: JsonOption = False) -> None:
    """Follow a job until it ends: a live view in a terminal, plain lines otherwise."""
    with reported(as_json), KilnClient.from_settings() as client:
        outcome = follow(client, job_id, as_json=as_json)
    raise typer.Exit(outcome)
