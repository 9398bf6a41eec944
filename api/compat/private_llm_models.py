"""The private LLM API server's `POST /api/v1/models/switch/{model_name}`: the admin makes a
model the active one, as `PUT /v1/models/active` does, for that server's clients."""

from fastapi import APIRouter
from pydantic import BaseModel

from api import service
from api.deps import AdminDep, SessionDep
from shared.schemas import ErrorResponse

router = APIRouter(tags=["private LLM server"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404)
}


class SwitchResponse(BaseModel):
    """What the switch answers: a sentence for people and the model now active."""

    message: str
    active_model: str


@router.post(
    "/api/v1/models/switch/{model_name:path}", response_model=SwitchResponse, responses=ERRORS
)
def switch_model(model_name: str, session: SessionDep, _: AdminDep) -> SwitchResponse:
    """Make the model the active one, kept across restarts (admin key only); `404` when no live
    GPU worker serves it."""
    model = service.switch_model(session=session, model=model_name)
    return SwitchResponse(message=f"switched the active model to {model}", active_model=model)
