"""What an app is built from: the brief, the site the template writes, the prompt an LLM gets,
and the parsing of what it answers."""

import base64
import html
import json
from dataclasses import dataclass
from typing import Any

from shared.attachments import Attachment

FILES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
        "deleted": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["files"],
}
"""The structured output asked of the LLM: files to write (and, in a revision, to delete)."""

INLINE_TEXT_CHARS = 20_000  # of a text attachment, shown to the LLM
SYSTEM_PROMPT = (
    "You write complete, working static web apps (HTML, CSS, JavaScript; no build step, no "
    "server). Answer only with JSON matching the schema: the files to write, each with a "
    "relative path and its full content. index.html is required. Include a README.md with the "
    "sections Summary, Setup, Usage, Code explanation and License. Never include secrets."
)


@dataclass(frozen=True)
class Brief:
    """One round of an app build, as the job's input holds it."""

    task: str
    round: int
    email: str
    brief: str
    checks: list[str]
    attachments: list[Attachment]

    @classmethod
    def from_input(cls, job_input: dict[str, Any]) -> "Brief":
        return cls(
            task=job_input["task"],
            round=job_input["round"],
            email=job_input["email"],
            brief=job_input["brief"],
            checks=list(job_input.get("checks", [])),
            attachments=[
                Attachment(item["name"], item["media_type"], base64.b64decode(item["data_b64"]))
                for item in job_input.get("attachments", [])
            ],
        )


def template_site(brief: Brief) -> dict[str, str]:
    """A deterministic single-page app that shows the brief, its checks and its attachments."""
    checks = "\n".join(f"      <li>{html.escape(check)}</li>" for check in brief.checks)
    attachments = "\n".join(_attachment_item(item) for item in brief.attachments)
    page = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(brief.task)}</title>
  <style>
    body {{ font-family: system-ui, sans-serif; line-height: 1.5; }}
    main {{ max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }}
    section {{ border-top: 1px solid #ddd; margin-top: 1.5rem; }}
    img {{ max-width: 100%; }}
  </style>
</head>
<body>
  <main>
    <h1>{html.escape(brief.task)}</h1>
    <p id="round">Round {brief.round}</p>
    <section id="brief">
      <h2>Brief</h2>
      <p>{html.escape(brief.brief)}</p>
    </section>
    <section id="checks">
      <h2>Checks</h2>
      <ul>
{checks}
      </ul>
    </section>
    <section id="attachments">
      <h2>Attachments</h2>
      <ul>
{attachments}
      </ul>
    </section>
  </main>
</body>
</html>
"""
    return {"index.html": page}


def _attachment_item(item: Attachment) -> str:
    name = html.escape(item.name)
    if item.media_type.startswith("image/"):
        return f'      <li><img src="{name}" alt="{name}"></li>'
    return f'      <li><a href="{name}">{name}</a> ({html.escape(item.media_type)})</li>'


def llm_prompt(brief: Brief, current: dict[str, str] | None, errors: list[str]) -> str:
    """The user prompt: the brief, its checks, the attachments and, for a revision, the files."""
    parts = [f"Task: {brief.task} (round {brief.round})", f"Brief:\n{brief.brief}"]
    if brief.checks:
        parts.append(
            "The app must pass these checks:\n" + "\n".join(f"- {c}" for c in brief.checks)
        )
    for item in brief.attachments:
        if item.is_text:
            text = item.content.decode("utf-8", errors="replace")[:INLINE_TEXT_CHARS]
            parts.append(
                f"Attachment {item.name} ({item.media_type}), committed beside index.html:\n{text}"
            )
        else:
            parts.append(
                f"Attachment {item.name} ({item.media_type}, {len(item.content)} bytes) is "
                "committed beside index.html; refer to it by that relative path."
            )
    if current:
        listing = "\n\n".join(f"--- {path}\n{content}" for path, content in sorted(current.items()))
        parts.append(
            "Revise the existing app below to meet the brief: answer with the files to add or "
            f"change, and list files to remove in `deleted`.\n{listing}"
        )
    if errors:
        parts.append("Your previous answer was rejected:\n" + "\n".join(f"- {e}" for e in errors))
    return "\n\n".join(parts)


def parse_files(text: str) -> tuple[dict[str, str], list[str]]:
    """The files and deletions of an LLM answer; raises ValueError saying what is wrong."""
    try:
        answer = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the answer is not JSON: {exc}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("files"), list):
        raise ValueError('the answer must be an object with a "files" list')
    files: dict[str, str] = {}
    for item in answer["files"]:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ValueError('each file needs a string "path" and "content"')
        if not isinstance(item.get("content"), str):
            raise ValueError(f'{item["path"]!r} needs a string "content"')
        files[item["path"].removeprefix("./")] = item["content"]
    deleted = answer.get("deleted") or []
    if not isinstance(deleted, list) or not all(isinstance(path, str) for path in deleted):
        raise ValueError('"deleted" must be a list of paths')
    return files, deleted
