"""`/v1/keys`: the admin creates, lists and revokes API keys."""

from fastapi import APIRouter

from api import service
from api.deps import AdminDep, SessionDep
from shared.models import ApiKeyCreated, ApiKeyPublic
from shared.schemas import ErrorResponse, KeyCreate

router = APIRouter(prefix="/v1/keys", tags=["keys"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422)
}


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=ERRORS)
def create_key(body: KeyCreate, session: SessionDep, _: AdminDep) -> ApiKeyCreated:
    """Create an API key; the key itself is shown only in this answer."""
    api_key, secret = service.create_key(session=session, name=body.name)
    return ApiKeyCreated(id=api_key.id, name=api_key.name, key=secret)


@router.get("", response_model=list[ApiKeyPublic], responses=ERRORS)
def list_keys(session: SessionDep, _: AdminDep) -> list[ApiKeyPublic]:
    """Every API key, without the keys themselves."""
    return [
        ApiKeyPublic.model_validate(key, from_attributes=True)
        for key in service.list_keys(session=session)
    ]


@router.delete("/{key_id}", response_model=ApiKeyPublic, responses=ERRORS)
def revoke_key(key_id: str, session: SessionDep, _: AdminDep) -> ApiKeyPublic:
    """Revoke an API key; it stops working at once."""
    api_key = service.revoke_key(session=session, key_id=key_id)
    return ApiKeyPublic.model_validate(api_key, from_attributes=True)
