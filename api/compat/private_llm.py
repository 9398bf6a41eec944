"""The private LLM API server's `POST /api/v1/generate` over a Kiln `generate` job: `{"prompt",
"stream"}` in; `{"response"}` out, or Server-Sent Events `data: {"response": ...}` ending with
`data: {}`. Like that server, it names no model: the job gets Kiln's active default."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import calls
from api.compat import answers
from api.deps import BaseURLDep, KeyDep, SettingsDep
from shared.schemas import ErrorResponse

router = APIRouter(tags=["private LLM server"])

END: dict[str, Any] = {}
"""The event that ends a stream: `data: {}`."""


class GenerateRequest(BaseModel):
    """The server's one request shape."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, description="The input text for the LLM.")
    stream: bool = Field(False, description="Server-Sent Events instead of one object.")


class GenerateResponse(BaseModel):
    """The whole completion."""

    response: str


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'With `stream`, `data: {"response": ...}` events ending with `data: {}`',
        "content": {"text/event-stream": {}},
    },
    **{code: {"model": ErrorResponse} for code in (401, 404, 422, 429, 502, 503, 504)},
}


@router.post("/api/v1/generate", response_model=GenerateResponse, responses=RESPONSES)
async def generate(
    body: GenerateRequest, settings: SettingsDep, api_key: KeyDep, base_url: BaseURLDep
) -> Any:
    """Generate text from the active model, whole or streamed."""
    job = await calls.submit(
        kind="generate", job_input={"prompt": body.prompt}, settings=settings, api_key=api_key
    )
    if body.stream:
        return answers.streamed(job.id, api_key, _piece, END)
    result = await answers.waited(job, settings, base_url)
    if isinstance(result, JSONResponse):
        return result
    return GenerateResponse(response=str(result.get("response") or ""))


def _piece(text: str) -> dict[str, Any]:
    return {"response": text}
