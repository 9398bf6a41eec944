"""The FastAPI application: wiring only."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import limits, local_cache
from api.compat import gateway, mlops, private_llm, private_llm_models
from api.compat import ollama as ollama_compat
from api.compat import openai as openai_compat
from api.errors import install_error_handlers
from api.middleware import (
    BodySizeLimitMiddleware,
    KilnCORSMiddleware,
    RequestIDMiddleware,
    SecurityHeadersMiddleware,
)
from api.pages import STATIC_PATH, static_files
from api.pages import router as pages_router
from api.routes import compose, deliveries, generation, health, jobs, keys, models, sites, tasks
from api.routes import metrics as metrics_route
from api.routes import usage as usage_route
from api.routes.tasks import BRIEF_PATHS
from shared import crud
from shared.config import Environment, get_settings
from shared.db import open_session
from shared.logs import configure_logging

CANCEL_RETRY_S = 0.5  # how long the shutdown waits on a cancelled task before cancelling again
# What a browser script on an allowed origin may send; keys travel in headers, never cookies.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-API-Key",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-ID",
]


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if settings.admin_api_key is not None:
        with open_session() as session:
            crud.ensure_admin_key(session=session, key=settings.admin_api_key.get_secret_value())
    listener = asyncio.create_task(local_cache.follow_changes())
    yield
    await _cancelled(listener)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it ends. A cancel that lands while redis-py is still
    subscribing can be lost (seen under uvloop, when a failed bind shuts the API down right
    after its start), so it is repeated: a lost one would hang the shutdown for good."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_RETRY_S)


def create_app() -> FastAPI:
    """Build the API app from the settings."""
    settings = get_settings()
    configure_logging(settings.log_level)
    docs = settings.env == Environment.development
    app = FastAPI(
        title="Kiln",
        summary="A queue-backed job engine for LLM work.",
        version="0.1.0",
        lifespan=lifespan,
        # Production publishes no interactive docs and no schema of the API.
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(app)
    app.add_exception_handler(limits.RateLimited, limits.rate_limited_response)
    # A brief carries its attachments base64-encoded (4 bytes for every 3) in its JSON body.
    brief_bytes = max(settings.max_body_bytes, settings.attachments_max_bytes * 4 // 3 + 65_536)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path=dict.fromkeys(BRIEF_PATHS, brief_bytes),
    )
    app.add_middleware(RequestIDMiddleware)
    # Swagger UI and published sites carry inline code: they get only the anti-framing policy.
    app.add_middleware(SecurityHeadersMiddleware, relaxed_prefixes=("/docs", "/redoc", "/pages/"))
    if settings.cors_origins:
        app.add_middleware(
            KilnCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=["Location", "X-Request-ID"],
        )
    for module in (jobs, generation, compose, models, tasks, deliveries, keys, health, sites):
        app.include_router(module.router)
    app.include_router(metrics_route.router)
    app.include_router(usage_route.router)
    app.include_router(pages_router)
    app.mount(STATIC_PATH, static_files(), name="static")
    for compat in (openai_compat, ollama_compat, private_llm, private_llm_models, mlops, gateway):
        app.include_router(compat.router)
    return app
