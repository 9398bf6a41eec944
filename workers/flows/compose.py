"""The `compose` job: the LLM drafts a docker compose file as structured output; Kiln parses the
YAML, validates it against the Compose Specification and checks that every requested service is
there, asking once more with the errors when it is not."""

import json
from functools import lru_cache
from typing import Any

import yaml
from jsonschema import validators
from jsonschema.protocols import Validator

from shared.config import LLMProviderName
from shared.exceptions import InvalidOutput
from shared.llm import GenerateRequest, get_provider
from shared.schemas import ComposeInput, ComposeService
from workers.runner import JobContext

MAX_ERRORS = 10  # schema errors fed back to the LLM and reported; the first ones suffice

DRAFT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"compose_yaml": {"type": "string"}},
    "required": ["compose_yaml"],
}
"""The structured output the LLM answers with."""

SYSTEM_PROMPT = (
    "You write docker compose files that follow the Compose Specification (no `version` key). "
    "Answer with a JSON object whose `compose_yaml` is the complete file as YAML text. Define "
    "every requested service under its exact name, keep any image, ports, environment and "
    "depends_on given for it, and pin image tags."
)


@lru_cache
def _compose_validator() -> Validator:
    # check-jsonschema ships the Compose Specification's schema, kept current with SchemaStore.
    # Imported here: it brings its command line (requests, ruamel, click), half a second of
    # start-up that every worker process would pay for the first compose job only.
    from check_jsonschema.builtin_schemas import get_builtin_schema  # type: ignore[import-untyped]

    schema = get_builtin_schema("vendor.compose-spec")
    validator: Validator = validators.validator_for(schema)(schema)
    return validator


def run(context: JobContext) -> dict[str, Any]:
    """A validated compose file for the requested services."""
    job_input = ComposeInput.model_validate(context.job.input)
    services = job_input.requested()
    if context.settings.llm_provider == LLMProviderName.template:
        text = yaml.safe_dump(template_compose(services), sort_keys=False)
        return _result(text, services)
    provider = get_provider()
    previous = ""
    errors: list[str] = []
    for _ in range(2):  # one retry, with the errors fed back
        if errors:
            context.emit_progress({"step": "retrying", "errors": errors})
        request = GenerateRequest(
            prompt=_prompt(services, job_input.options, previous, errors),
            model=job_input.model or context.settings.default_model,
            system=SYSTEM_PROMPT,
            format=DRAFT_SCHEMA,
            options={"temperature": 0},
        )
        answer = provider.generate(
            request, on_token=lambda _: None, should_stop=context.should_stop
        )
        text, errors = check_draft(answer.response, [s.name for s in services])
        if not errors:
            return _result(text, services)
        previous = text or answer.response  # the YAML itself reads better than its JSON
    raise InvalidOutput("the LLM did not write a valid compose file: " + "; ".join(errors))


def check_draft(answer: str, required: list[str]) -> tuple[str, list[str]]:
    """The compose YAML in the LLM's answer and what is wrong with it (nothing: valid)."""
    try:
        draft = json.loads(answer)
    except ValueError:
        draft = None
    text = draft.get("compose_yaml") if isinstance(draft, dict) else None
    if not isinstance(text, str):
        return "", ['the answer is not a JSON object with a string "compose_yaml"']
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return text, [f"compose_yaml is not valid YAML: {exc}"]
    if not isinstance(document, dict):
        return text, ["compose_yaml is not a YAML mapping"]
    errors = [
        f"{error.json_path}: {error.message}"
        for error in _compose_validator().iter_errors(document)
    ][:MAX_ERRORS]
    defined = document.get("services")
    defined = defined if isinstance(defined, dict) else {}
    errors += [f"service {name!r} is missing" for name in required if name not in defined]
    return text, errors


def template_compose(services: list[ComposeService]) -> dict[str, Any]:
    """The compose file the template provider writes: each service as the caller gave it."""
    written: dict[str, Any] = {}
    for service in services:
        fields = service.model_dump(exclude={"name"}, exclude_defaults=True)
        written[service.name] = {"image": service.image or f"{service.name}:latest", **fields}
    return {"services": written}


def _prompt(
    services: list[ComposeService], options: dict[str, Any], previous: str, errors: list[str]
) -> str:
    wanted = [s.model_dump(exclude_defaults=True) for s in services]
    lines = ["Write a docker compose file for these services:", json.dumps(wanted, indent=2)]
    if options:
        lines += ["Also take these wishes into account:", json.dumps(options, indent=2)]
    if errors:
        lines += ["Your previous answer was:", previous, "Fix these problems in it:"]
        lines += [f"- {error}" for error in errors]
    return "\n".join(lines)


def _result(text: str, services: list[ComposeService]) -> dict[str, Any]:
    document = yaml.safe_load(text)
    defined: dict[str, Any] = document["services"]
    return {
        "compose_yaml": text,
        "services": list(defined),
        "warnings": _warnings(document, defined, services),
    }


def _warnings(
    document: dict[str, Any], defined: dict[str, Any], services: list[ComposeService]
) -> list[str]:
    """What is valid but worth a look: extra services, changed or unpinned images."""
    warnings = []
    if "version" in document:
        warnings.append("the top-level `version` key is obsolete and ignored")
    requested = {s.name: s for s in services}
    warnings += [f"service {name!r} was added" for name in defined if name not in requested]
    for name, service in defined.items():
        image = service.get("image") if isinstance(service, dict) else None
        wanted = requested[name].image if name in requested else None
        if wanted and image != wanted:
            warnings.append(f"service {name!r} uses image {image!r}, not {wanted!r}")
        elif isinstance(image, str) and not _pinned(image):
            warnings.append(f"service {name!r}: image {image!r} is not pinned to a version")
    return warnings


def _pinned(image: str) -> bool:
    """Whether an image reference names a version: a tag other than `latest`, or a digest."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return "@" in image or tag not in {"", "latest"}
