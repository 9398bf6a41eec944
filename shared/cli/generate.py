"""`kiln generate "prompt"`: stream a completion's tokens to the terminal as they come."""

from typing import Annotated, Any

import typer

from shared.cli.client import KilnClient, Unreachable
from shared.cli.exits import ExitCode, print_json, reported


def generate(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str | None, typer.Option(help="The model (default: Kiln's).")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the outcome, as JSON.")
    ] = False,
) -> None:
    """Complete PROMPT, streaming its tokens to stdout; Ctrl-C cancels the job."""
    body: dict[str, Any] = {"prompt": prompt, "stream": True}
    body |= {name: value for name, value in (("model", model), ("system", system)) if value}
    outcome: dict[str, Any] = {}
    with reported(as_json), KilnClient.from_settings() as client:
        for event in client.stream("POST", "/v1/generate", json=body):
            if event.event == "token" and not as_json:
                typer.echo(event.data["delta"], nl=False)
            elif event.event in ("done", "error"):
                outcome = {event.event: event.data}
        if not outcome:
            raise Unreachable("stream_ended", "the stream ended before the job did")
    if as_json:
        print_json(outcome)
    else:
        typer.echo()
    if done := outcome.get("done"):
        if not as_json:
            tokens = (done.get("usage") or {}).get("completion_tokens")
            typer.echo(f"{done['provider']} ({done['model']}), {tokens} tokens", err=True)
        raise typer.Exit(ExitCode.succeeded)
    error = outcome["error"]
    if not as_json:
        typer.echo(f"error: {error.get('message')} ({error.get('code')})", err=True)
    raise typer.Exit(ExitCode.canceled if error.get("code") == "canceled" else ExitCode.failed)
