"""The `app` job: a brief becomes a repository with a live site, then the evaluator hears of it.

Step 1 (`gpu`): write the files (the LLM, or the template), add what every repo gets, scan for
secrets. Step 2 (`io`): commit, deploy, wait until the site is live, and queue the evaluation
callback (`callbacks`), which the delivery log then tracks.
"""

import base64
import logging
import time

from shared import crud
from shared.appbuild import files as repo_files
from shared.appbuild import secret_scan
from shared.appbuild.site import (
    FILES_SCHEMA,
    SYSTEM_PROMPT,
    Brief,
    llm_prompt,
    parse_files,
    template_site,
)
from shared.config import LLMProviderName, Settings
from shared.db import open_session
from shared.exceptions import InvalidOutput, JobError
from shared.llm import GenerateRequest, get_provider
from shared.publish import get_publisher
from shared.publish.github import repo_name
from shared.queues import TASK_APP_PUBLISH
from shared.webhooks.outbox import evaluation_delivery
from workers.runner import Completion, Handoff, JobContext

log = logging.getLogger(__name__)

ROUND_WAIT_S = 900  # how long a round waits for the task's earlier rounds to finish
ROUND_POLL_S = 1.0


class SecretDetected(JobError):
    code = "secret_detected"


def generate(context: JobContext) -> Handoff:
    """Step 1: the complete file set of this round, handed to the publish step."""
    started = time.monotonic()
    brief = Brief.from_input(context.job.input)
    _wait_for_earlier_rounds(context, brief)
    repo = repo_name(brief.task)
    context.emit_progress({"step": "generating", "round": brief.round})
    current = get_publisher().current_files(repo) if brief.round > 1 else None
    current_text = {
        path: content.decode("utf-8", "replace") for path, content in (current or {}).items()
    }
    written, deleted = _write_site(context, brief, current_text)
    site = {path: content.encode() for path, content in written.items()}
    files = {p: c for p, c in (current or {}).items() if p not in deleted} | site
    files |= {item.name: item.content for item in brief.attachments}
    files |= _repo_extras(context.settings, brief, files)
    found = secret_scan.findings(files, _configured_secrets(context.settings))
    if found:
        raise SecretDetected(f"refusing to publish a secret: {'; '.join(found)}")
    artifacts = {
        "repo": repo,
        "files": {path: base64.b64encode(content).decode() for path, content in files.items()},
        "durations": {"generate_s": round(time.monotonic() - started, 3)},
    }
    return Handoff(TASK_APP_PUBLISH, artifacts)


def publish(context: JobContext) -> Completion:
    """Step 2: commit, deploy, wait until live, queue the evaluation callback; the result."""
    job, settings = context.job, context.settings
    brief = Brief.from_input(job.input)
    artifacts = job.artifacts or {}
    files = {path: base64.b64decode(data) for path, data in artifacts["files"].items()}
    durations = dict(artifacts.get("durations", {}))
    publisher = get_publisher()
    context.emit_progress({"step": "committing", "round": brief.round})
    started = time.monotonic()
    publication = publisher.publish(
        artifacts["repo"], files, message=f"Round {brief.round}: {brief.brief[:60]}"
    )
    durations["commit_s"] = round(time.monotonic() - started, 3)
    context.emit_progress({"step": "deploying", "round": brief.round})
    context.emit_progress({"step": "waiting_for_pages", "round": brief.round})
    started = time.monotonic()
    publisher.wait_until_live(publication, timeout_s=settings.pages_timeout_s)
    durations["deploy_s"] = round(time.monotonic() - started, 3)
    context.emit_progress({"step": "notifying", "round": brief.round})
    callback = {
        "email": brief.email,
        "task": brief.task,
        "round": brief.round,
        "nonce": job.input["nonce"],
        "repo_url": publication.repo_url,
        "commit_sha": publication.commit_sha,
        "pages_url": publication.pages_url,
    }
    result = {
        **{k: callback[k] for k in ("repo_url", "commit_sha", "pages_url")},
        "files": sorted(files),
        "durations": durations,
    }
    notify = evaluation_delivery(
        job, job.input["evaluation_url"], callback, settings.evaluation_deadline_s
    )
    result["notify"] = {"delivery_id": notify.id, "log": f"/v1/jobs/{job.id}/deliveries"}
    return Completion(result, also_deliver=notify)


def _wait_for_earlier_rounds(context: JobContext, brief: Brief) -> None:
    deadline = time.monotonic() + ROUND_WAIT_S
    while True:
        with open_session() as session:
            earlier = crud.unfinished_rounds_before(
                session=session, task=brief.task, job_id=context.job.id
            )
        if not earlier:
            return
        if time.monotonic() > deadline:
            raise JobError(f"an earlier round of {brief.task!r} did not finish in time")
        context.emit_progress({"step": "waiting_for_earlier_round", "round": brief.round})
        time.sleep(ROUND_POLL_S)


def _write_site(
    context: JobContext, brief: Brief, current: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The files the LLM writes (or the template) and the files it deletes."""
    if context.settings.llm_provider == LLMProviderName.template:
        return template_site(brief), []
    provider = get_provider()
    errors: list[str] = []
    for _ in range(2):  # one retry, with the errors fed back
        request = GenerateRequest(
            prompt=llm_prompt(brief, current or None, errors),
            model=context.settings.default_model,
            system=SYSTEM_PROMPT,
            format=FILES_SCHEMA,
            options={"temperature": 0},
        )
        answer = provider.generate(
            request, on_token=lambda _: None, should_stop=context.should_stop
        )
        try:
            written, deleted = parse_files(answer.response)
        except ValueError as exc:
            errors = [str(exc)]
            continue
        merged = {p: c for p, c in current.items() if p not in deleted} | written
        errors = repo_files.path_errors(written) + [
            e for e in repo_files.path_errors(merged) if e == "index.html is missing"
        ]
        if not errors:
            return written, deleted
    raise InvalidOutput("the LLM did not write a valid app: " + "; ".join(errors))


def _repo_extras(settings: Settings, brief: Brief, files: dict[str, bytes]) -> dict[str, bytes]:
    """LICENSE, a README with every required section, and `.nojekyll`."""
    holder = settings.license_holder or settings.github_owner or brief.email.split("@")[0]
    readme = files.get("README.md", b"").decode("utf-8", "replace")
    readme = repo_files.complete_readme(
        readme, task=brief.task, brief=brief.brief, files=[*files, "LICENSE", "README.md"]
    )
    return {
        "LICENSE": repo_files.mit_license(holder).encode(),
        "README.md": readme.encode(),
        ".nojekyll": b"",
    }


def _configured_secrets(settings: Settings) -> list[str]:
    values = [
        settings.github_token,
        settings.task_secret,
        settings.admin_api_key,
        settings.webhook_secret,
        settings.flower_basic_auth,
        settings.openai_api_key,
    ]
    return [value.get_secret_value() for value in values if value is not None]
