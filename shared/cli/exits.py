"""The exit codes of the API commands (`kiln jobs`, `kiln tasks`, `kiln generate`), and how a
refused or failed request ends one."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any

import typer

from shared.cli.client import ClientError, Unreachable

EXIT_CODES_HELP = (
    "Exit codes: 0 succeeded, 1 failed, 2 bad usage or refused by the API (4xx), 3 canceled, "
    "4 Kiln unreachable, timed out or broken (5xx)."
)


class ExitCode(IntEnum):
    """What a command's exit status says."""

    succeeded = 0  # the request worked; a followed job succeeded
    failed = 1  # the followed job failed
    refused = 2  # bad usage (as typer's own usage errors), or the API answered 4xx
    canceled = 3  # the followed job was canceled
    unavailable = 4  # no answer, a time-out, or a 5xx


JOB_OUTCOMES = {
    "succeeded": ExitCode.succeeded,
    "failed": ExitCode.failed,
    "canceled": ExitCode.canceled,
}


def print_json(data: Any) -> None:
    """One JSON document (or JSON Lines item) on stdout."""
    typer.echo(json.dumps(data, default=str))


@contextmanager
def reported(as_json: bool) -> Iterator[None]:
    """End the command with the right exit code and a clean message when Kiln refuses or fails
    to answer: the API's error shape on stdout with `--json`, one line on stderr without."""
    try:
        yield
    except ClientError as exc:
        if as_json:
            print_json(exc.to_json())
        else:
            typer.echo(f"error: {exc.message} ({exc.code})", err=True)
        unavailable = isinstance(exc, Unreachable) or (exc.status_code or 0) >= 500
        raise typer.Exit(ExitCode.unavailable if unavailable else ExitCode.refused) from None
