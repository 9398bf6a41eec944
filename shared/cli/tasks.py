"""`kiln tasks send brief.json`: post an app brief to `/api-endpoint` and follow its build."""

import json
from typing import Annotated

import typer

from shared.cli.client import KilnClient
from shared.cli.exits import EXIT_CODES_HELP, print_json, reported
from shared.cli.watch import follow

app = typer.Typer(help="Send app briefs and follow their builds.", no_args_is_help=True)


@app.command(epilog=EXIT_CODES_HELP)
def send(
    brief: Annotated[
        typer.FileText, typer.Argument(help='The brief as JSON ("-": stdin), secret included.')
    ],
    watch: Annotated[
        bool, typer.Option(help="Follow the build (its job is the admin key's to see).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only, for scripts.")] = False,
) -> None:
    """Send an app brief, then follow its build and exit with its outcome."""
    try:
        body = json.loads(brief.read())
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="BRIEF") from None
    with reported(as_json), KilnClient.from_settings() as client:
        accepted = client.call("POST", "/api-endpoint", json=body)
        if as_json:
            print_json(accepted)
        else:
            typer.echo(
                f"accepted: task {accepted['task']} round {accepted['round']}, "
                f"job {accepted['job_id']}"
            )
        if watch:
            raise typer.Exit(follow(client, accepted["job_id"], as_json=as_json))
