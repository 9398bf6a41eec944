"""Webhook delivery logs, manual redelivery, and the key's signing secret."""

from typing import Annotated

from fastapi import APIRouter, Query

from api import service
from api.deps import KeyDep, SessionDep
from shared.schemas import DeliveryList, DeliveryPublic, ErrorResponse, WebhookSecret
from shared.states import DeliveryStatus

router = APIRouter(tags=["webhooks"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422)
}


@router.get("/v1/jobs/{job_id}/deliveries", response_model=DeliveryList, responses=ERRORS)
def job_deliveries(job_id: str, session: SessionDep, api_key: KeyDep) -> DeliveryList:
    """Every webhook delivery of the job, with every attempt, newest first."""
    pairs, has_more = service.list_deliveries(session=session, api_key=api_key, job_id=job_id)
    return DeliveryList(
        data=[DeliveryPublic.from_delivery(*pair) for pair in pairs],
        has_more=has_more,
        next_cursor=pairs[-1][0].id if has_more else None,
    )


@router.post(
    "/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryPublic,
    responses={409: {"model": ErrorResponse}, **ERRORS},
)
def redeliver(
    job_id: str, delivery_id: str, session: SessionDep, api_key: KeyDep
) -> DeliveryPublic:
    """Send a finished delivery again (same `webhook-id` and body); 409 while it is running."""
    delivery, attempts = service.redeliver(
        session=session, api_key=api_key, job_id=job_id, delivery_id=delivery_id
    )
    return DeliveryPublic.from_delivery(delivery, attempts)


@router.get("/v1/deliveries", response_model=DeliveryList, responses=ERRORS)
def deliveries(
    session: SessionDep,
    api_key: KeyDep,
    status: DeliveryStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeliveryList:
    """Deliveries across the key's jobs, newest first (e.g. `?status=failed`)."""
    pairs, has_more = service.list_deliveries(
        session=session, api_key=api_key, status=status, cursor=cursor, limit=limit
    )
    return DeliveryList(
        data=[DeliveryPublic.from_delivery(*pair) for pair in pairs],
        has_more=has_more,
        next_cursor=pairs[-1][0].id if has_more else None,
    )


@router.get("/v1/webhook-secret", response_model=WebhookSecret, responses=ERRORS)
def get_webhook_secret(session: SessionDep, api_key: KeyDep) -> WebhookSecret:
    """The secret that signs this key's webhooks; verify them with any Standard Webhooks
    library."""
    return WebhookSecret(
        secret=service.webhook_secret(session=session, api_key=api_key, rotate=False)
    )


@router.post("/v1/webhook-secret", response_model=WebhookSecret, responses=ERRORS)
def rotate_webhook_secret(session: SessionDep, api_key: KeyDep) -> WebhookSecret:
    """Replace this key's webhook secret; later attempts are signed with the new one."""
    return WebhookSecret(
        secret=service.webhook_secret(session=session, api_key=api_key, rotate=True)
    )
