"""Every benchmark beside its anchor in one run: the generated block of bench/RESULTS.md, the
plots in bench/plots/ and the table in README.md's Performance section.

    uv run python -m bench.run_all [--smoke] [--out DIR]

Each script runs as its own process with `--json PATH` and writes its summaries there (see
`bench.common.bench_summary`). A script that fails or writes none is reported as not run, with
the tail of its output, and the report goes on. `--smoke` gives every script tiny sizes (CI);
`--out DIR` writes RESULTS.md, README.md and the plots into DIR instead of the committed files.
"""

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: PNGs are drawn by Agg, with no display

from bench.common import PYTHON, ROOT, machine, machine_busy_s, table, tree

# Script module → (full arguments, smoke arguments). The smoke sizes finish in seconds each.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "submit": ([], ["--reps", "1", "--requests", "200", "--warmup", "20", "--max-other", "100"]),
    "e2e": ([], ["--reps", "1", "--jobs", "50", "--round-trips", "5", "--max-other", "100"]),
    "stream": ([], ["--reps", "1", "--tokens", "30", "--token-delays", "0.005"]),
    "webhooks": ([], ["--reps", "1", "--deliveries", "100"]),
    "appbuild": ([], ["--tasks", "1"]),
}
SMOKE_ENV = {"BENCH_QUIET_WAIT_S": "0"}  # smoke runs do not wait for a quiet machine
TIMEOUT_S = 3 * 3600.0  # per script; a stuck one must not hold the report forever
SMOKE_TIMEOUT_S = 180.0
INTERRUPT_GRACE_S = 30.0  # for an interrupted script to stop its servers before it is killed
TAIL_LINES = 6  # of a failed script's output, in the report
RESULTS_MARKS = ("<!-- run_all:begin -->", "<!-- run_all:end -->")
README_MARKS = ("<!-- bench:begin -->", "<!-- bench:end -->")
PLOTS = ("throughput.png", "latency.png")
SUMMARY_KEYS = {"name", "title", "unit", "kiln", "anchor", "ratio", "goal", "goal_text", "met"}
SUMMARY_KEYS |= {"latency_ms", "extra", "command", "table"}
DATA = "summaries.json"  # beside the plots: every script's summaries, or why it did not run


@dataclass
class Outcome:
    """What one script gave: its summaries, or why there are none."""

    script: str
    summaries: list[dict[str, Any]] = field(default_factory=list)
    not_run: str = ""


def run_script(
    script: str, argv: Sequence[str], *, env: dict[str, str], timeout: float, work: Path
) -> Outcome:
    """Run `bench.<script>` with `argv` and `--json`; its output goes to `work/<script>.log`."""
    summary_path, log_path = work / f"{script}.json", work / f"{script}.log"
    command = [PYTHON, "-m", f"bench.{script}", *argv, "--json", str(summary_path)]
    print(f"bench.{script} {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            returncode = process.wait(timeout=timeout)
            failure = f"exit status {returncode}" if returncode else ""
        except subprocess.TimeoutExpired:
            stop_script(process)
            failure = f"timed out after {timeout:.0f} s"
        except KeyboardInterrupt:
            stop_script(process)
            raise
    print(f"  {time.monotonic() - started:.0f} s", flush=True)
    if not failure and summary_path.exists():
        summaries, failure = read_summaries(summary_path)
        if not failure:
            return Outcome(script, summaries)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-TAIL_LINES:]
    reason = f"{failure or 'no summary written'}: " + " / ".join(tail)
    print(f"  not run: {reason}", flush=True)
    return Outcome(script, not_run=reason)


def stop_script(process: "subprocess.Popen[bytes]") -> None:
    """Interrupt a script so it stops its servers itself, then kill whatever of its process tree
    is left (its servers lead sessions of their own, out of reach of its process group)."""
    pids = tree(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=INTERRUPT_GRACE_S)
    for pid in {*pids, *tree(process.pid)}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def read_summaries(path: Path) -> tuple[list[dict[str, Any]], str]:
    """A script's summaries (one or a list), or what is wrong with them."""
    try:
        loaded = json.loads(path.read_text())
    except ValueError as error:
        return [], f"unreadable summary ({error})"
    summaries = loaded if isinstance(loaded, list) else [loaded]
    for summary in summaries:
        missing = SUMMARY_KEYS - set(summary) if isinstance(summary, dict) else SUMMARY_KEYS
        if missing:
            return [], f"a summary lacks {', '.join(sorted(missing))}"
    return summaries, ""


# --- tables --------------------------------------------------------------------------------------


def _met(summary: dict[str, Any]) -> str:
    if summary["goal_text"] == "none":
        return "—"
    return "yes" if summary["met"] else "**no**"


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """One row per measurement (and per script that did not run) against its goal."""
    headers = ["benchmark", "Kiln", "anchor", "unit", "Kiln / anchor", "goal", "met"]
    rows: list[list[object]] = []
    for outcome in outcomes:
        for s in outcome.summaries:
            ratio = f"{s['ratio']:.2f}"
            row = [s["title"], s["kiln"], s["anchor"], s["unit"], ratio, s["goal_text"], _met(s)]
            rows.append(row)
        if outcome.not_run:
            rows.append([f"bench.{outcome.script}", "not run", "", "", "", "", ""])
    return table(headers, rows)


def script_sections(outcomes: Sequence[Outcome]) -> str:
    """Each script's own tables under its command, and why any script did not run."""
    parts = []
    for outcome in outcomes:
        if outcome.not_run:
            parts.append(f"#### bench.{outcome.script}: not run\n\n```\n{outcome.not_run}\n```")
        elif outcome.summaries:
            first = outcome.summaries[0]
            parts.append(f"#### `{first['command']}`\n\n{first['table']}")
    return "\n\n".join(parts)


# --- plots ---------------------------------------------------------------------------------------


def plot_throughput(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Kiln / anchor for every rate, each with its goal marked."""
    rates = [s for s in summaries if s["unit"].endswith("/s")]
    figure = Figure(figsize=(8, 1 + 0.6 * max(len(rates), 1)))
    axes = figure.subplots()
    labels = [s["title"] for s in rates]
    axes.barh(labels, [s["ratio"] for s in rates], color="tab:orange", label="Kiln / anchor")
    for index, s in enumerate(rates):
        axes.text(s["ratio"], index, f" {s['ratio']:.2f}  ({s['kiln']:,.0f} vs {s['anchor']:,.0f}"
                  f" {s['unit']})", va="center", fontsize=8)  # fmt: skip
        if s["goal"] > 0:
            goal_label = "goal" if index == 0 else "_nolegend_"
            axes.vlines(s["goal"], index - 0.4, index + 0.4, colors="black", label=goal_label)
    axes.axvline(1.0, color="grey", linestyle=":", label="the anchor")
    axes.invert_yaxis()
    axes.set_xlim(0, max([1.5, *(s["ratio"] * 1.6 for s in rates)]))
    axes.set_xlabel("Kiln's rate as a share of its anchor's")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=4, fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def _latency_label(summary: dict[str, Any]) -> str:
    what = (summary["extra"] or {}).get("latency")  # when it is not the measurement itself
    return f"{summary['title']}\n({what})" if what else summary["title"]


def plot_latency(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """p50 and p99 of Kiln and its anchor wherever a script measured them."""
    timed = [s for s in summaries if s["latency_ms"]]
    bars = [("kiln", "p50"), ("anchor", "p50"), ("kiln", "p99"), ("anchor", "p99")]
    colors = ["tab:orange", "tab:blue", "tab:red", "tab:cyan"]
    figure = Figure(figsize=(8, 1.5 + 0.9 * max(len(timed), 1)))
    axes = figure.subplots()
    height = 0.8 / len(bars)
    for offset, ((side, q), color) in enumerate(zip(bars, colors, strict=True)):
        positions = [index + offset * height for index in range(len(timed))]
        values = [s["latency_ms"][side][q] for s in timed]
        axes.barh(positions, values, height=height, color=color, label=f"{side} {q}")
    axes.set_yticks([index + 1.5 * height for index in range(len(timed))])
    axes.set_yticklabels([_latency_label(s) for s in timed])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds (log scale)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=4, fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")


# --- documents -----------------------------------------------------------------------------------


def replace_block(text: str, marks: tuple[str, str], body: str, before: str) -> str:
    """`text` with what lies between `marks` replaced by `body`; without the marks, the block
    is put in front of the first line starting with `before`, or at the end."""
    begin, end = marks
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    at = text.find(f"\n{before}")
    if at < 0:
        return f"{text.rstrip()}\n\n{block}\n"
    return f"{text[: at + 1]}{block}\n\n{text[at + 1 :]}"


def images(plots: Path, document: Path) -> str:
    """Markdown images of the plots, linked relative to `document`."""
    links = [Path(os.path.relpath(plots / name, document.parent)).as_posix() for name in PLOTS]
    return " ".join(f"![{Path(link).stem}]({link})" for link in links)


def write_documents(args: argparse.Namespace, outcomes: list[Outcome], other_pct: float) -> None:
    """The plots and their data, the blocks of RESULTS.md and of README.md's Performance
    section."""
    out = args.out.resolve() if args.out else None
    plots = out / "plots" if out else ROOT / "bench" / "plots"
    results = out / "RESULTS.md" if out else ROOT / "bench" / "RESULTS.md"
    readme = out / "README.md" if out else ROOT / "README.md"
    plots.mkdir(parents=True, exist_ok=True)
    summaries = [s for outcome in outcomes for s in outcome.summaries]
    (plots / DATA).write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    plot_throughput(summaries, plots / PLOTS[0])
    plot_latency(summaries, plots / PLOTS[1])

    command = "uv run python -m bench.run_all" + (" --smoke" if args.smoke else "")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "**Smoke run (tiny sizes) — not the benchmark.**" if args.smoke else "Full run."
    noise = (
        f"Other programs used {other_pct:.0f} % of the machine's CPU over the run: the machine "
        "is shared, so throughput and latency are noisy (each script's table shows its own "
        "noise reading)."
    )
    overview = summary_table(outcomes)
    header = f"{kind} `{command}`, {when}. {noise}\n\nMachine: {machine()}."
    generated = "\n\n".join(
        [
            "## Latest report (generated by `bench/run_all.py`)",
            header,
            overview,
            images(plots, results),
            script_sections(outcomes),
        ]
    )
    sources = (ROOT / "bench" / "RESULTS.md", ROOT / "README.md")
    text = replace_block(sources[0].read_text(), RESULTS_MARKS, generated, "## How to run")
    results.write_text(text)
    readme_body = "\n\n".join(
        [
            f"{kind} `{command}`, {when}; details and method in "
            "[bench/RESULTS.md](bench/RESULTS.md).",
            overview,
            images(plots, readme),
        ]
    )
    text = sources[1].read_text()
    if README_MARKS[0] not in text:
        text = replace_block(text, README_MARKS, "", "## Development")
        text = text.replace(README_MARKS[0], "## Performance\n\n" + README_MARKS[0], 1)
    readme.write_text(replace_block(text, README_MARKS, readme_body, "## Development"))
    print(f"wrote {results}, {readme} and {plots}/", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check, not a result")
    parser.add_argument("--out", type=Path, help="write the documents and plots here instead")
    args = parser.parse_args()
    env, timeout = (SMOKE_ENV, SMOKE_TIMEOUT_S) if args.smoke else ({}, TIMEOUT_S)
    busy, wall = machine_busy_s(), time.monotonic()
    ours = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-all-") as work:
        outcomes = []
        for script, (full, smoke) in BENCHMARKS.items():
            argv = smoke if args.smoke else full
            outcomes.append(run_script(script, argv, env=env, timeout=timeout, work=Path(work)))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours_s = used.ru_utime + used.ru_stime - ours.ru_utime - ours.ru_stime
    cores = len(os.sched_getaffinity(0))
    other_s = machine_busy_s() - busy - ours_s
    other_pct = 100 * max(0.0, other_s) / ((time.monotonic() - wall) * cores)
    write_documents(args, outcomes, other_pct)
    if not any(outcome.summaries for outcome in outcomes):
        sys.exit("no benchmark produced a summary")


if __name__ == "__main__":
    main()
