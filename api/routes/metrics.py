"""Prometheus metrics of this host's Kiln processes and the depth of every queue."""

from fastapi import APIRouter, Response

from shared import metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
def prometheus_metrics() -> Response:
    """The Prometheus text format; unauthenticated like any scrape target, and secret-free."""
    body, content_type = metrics.exposition(with_queues=True)
    return Response(body, media_type=content_type)
