"""Following a job to its end: a live view in a terminal (status, steps, a progress bar, the
streamed text), plain lines when the output is not a terminal, or JSON Lines of its events."""

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shared.cli.client import Event, KilnClient
from shared.cli.exits import JOB_OUTCOMES, ExitCode, print_json
from shared.states import TERMINAL

# The steps an app build reports, in order; they let its progress bar show how far it got.
APP_STEPS = ("generating", "committing", "deploying", "waiting_for_pages", "notifying")
BAR_WIDTH = 40
TAIL_LINES = 12  # of the streamed text, in the live view (all of it is printed at the end)
STATUS_STYLES = {"succeeded": "green", "failed": "red", "canceled": "yellow", "running": "cyan"}
RESULT_LINKS = ("repo_url", "commit_sha", "pages_url")  # shown when a result has them


class JobView:
    """What is known of a followed job; rich renders it afresh on every refresh."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job_id: str = job["id"]
        self.kind: str = job["kind"]
        self.status: str = job["status"]
        self.attempt: int = job["attempt"]
        self.steps: list[str] = []
        self.text: list[str] = []
        self.final: dict[str, Any] = {}

    def apply(self, event: Event) -> None:
        """Take in one event of the job."""
        if event.event == "status":
            self.status = event.data["status"]
            self.attempt = event.data.get("attempt", self.attempt)
            if event.ends_job:
                self.final = event.data
        elif event.event == "progress":
            step = event.data.get("step")
            if isinstance(step, str) and step not in self.steps:
                self.steps.append(step)
        elif event.event == "token":
            self.text.append(str(event.data.get("delta", "")))

    def status_line(self) -> Text:
        return Text.assemble(
            (f"job {self.job_id}", "bold"),
            f" {self.kind} ",
            (self.status, STATUS_STYLES.get(self.status, "")),
            f" (attempt {self.attempt})",
        )

    def progress(self) -> Table:
        """A bar, full once the job ended, showing an app build's share of steps done and
        pulsing otherwise while it runs; beside it, the steps done or the tokens streamed."""
        caption = f"{len(self.text)} tokens"
        if self.status in TERMINAL:
            bar = ProgressBar(total=1, completed=1, width=BAR_WIDTH)
        elif self.kind == "app" and self.steps and self.steps[-1] in APP_STEPS:
            done = APP_STEPS.index(self.steps[-1])
            bar = ProgressBar(total=len(APP_STEPS), completed=done, width=BAR_WIDTH)
            caption = f"{done}/{len(APP_STEPS)} steps"
        else:
            bar = ProgressBar(total=None, pulse=True, width=BAR_WIDTH)
        row = Table.grid(padding=(0, 1))  # a bar alone does not end its line
        row.add_row(bar, Text(caption, "dim"))
        return row

    def __rich__(self) -> RenderableType:
        lines: list[RenderableType] = [self.status_line()]
        for number, step in enumerate(self.steps, start=1):
            current = number == len(self.steps) and self.status not in TERMINAL
            lines.append(Text(f"  {'▸' if current else '✓'} {step}", "bold" if current else "dim"))
        lines.append(self.progress())
        if self.text:
            tail = "".join(self.text).splitlines()[-TAIL_LINES:]
            lines.append(Text("\n".join(tail)))
        return Group(*lines)

    def summary(self) -> Text:
        """The closing line: the outcome, and where an app build's result lives."""
        line = self.status_line()
        error = self.final.get("error") or {}
        if error:
            line.append(f": {error.get('message')} ({error.get('code')})")
        result = self.final.get("result") or {}
        for name in RESULT_LINKS:
            if result.get(name):
                line.append(f"\n  {name}: {result[name]}")
        return line


class PlainLines:
    """The events as plain lines, the streamed text as it comes: for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.mid_line = False  # streamed text awaits its line break

    def show(self, event: Event) -> None:
        if event.event == "token":
            self.console.print(str(event.data.get("delta", "")), end="")
            self.mid_line = True
        elif event.event == "status":
            self.line(f"status {event.data['status']} (attempt {event.data.get('attempt')})")
        elif event.event == "progress":
            self.line(f"step {event.data.get('step', event.data)}")

    def line(self, text: str | Text) -> None:
        if self.mid_line:
            self.console.print()
            self.mid_line = False
        self.console.print(text)


def follow(client: KilnClient, job_id: str, *, as_json: bool) -> ExitCode:
    """Show the job's events until it ends; the exit code of its outcome."""
    view = JobView(client.call("GET", f"/v1/jobs/{job_id}"))
    console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
    if as_json:
        for event in client.job_events(job_id):
            print_json(event.to_json())
            view.apply(event)
    elif console.is_terminal:
        with Live(view, console=console, refresh_per_second=8, transient=True):
            for event in client.job_events(job_id):
                view.apply(event)
        for step in view.steps:
            console.print(f"  ✓ {step}", style="dim")
        if view.text:
            console.print("".join(view.text))
    else:
        plain = PlainLines(console)
        plain.line(f"job {view.job_id} ({view.kind})")
        for event in client.job_events(job_id):
            plain.show(event)
            view.apply(event)
    if not as_json:
        console.print(view.summary())
    return JOB_OUTCOMES[view.status]
