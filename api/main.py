"""The FastAPI application: wiring only."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.compat import ollama as ollama_compat
from api.compat import openai as openai_compat
from api.errors import install_error_handlers
from api.middleware import BodySizeLimitMiddleware, RequestIDMiddleware
from api.routes import deliveries, generation, health, jobs, keys, models, sites, tasks
from api.routes.tasks import BRIEF_PATHS
from shared import crud
from shared.config import get_settings
from shared.db import open_session
from shared.logs import configure_logging


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if settings.admin_api_key is not None:
        with open_session() as session:
            crud.ensure_admin_key(session=session, key=settings.admin_api_key.get_secret_value())
    yield


def create_app() -> FastAPI:
    """Build the API app from the settings."""
    settings = get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="Kiln",
        summary="A queue-backed job engine for LLM work.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # A brief carries its attachments base64-encoded (4 bytes for every 3) in its JSON body.
    brief_bytes = max(settings.max_body_bytes, settings.attachments_max_bytes * 4 // 3 + 65_536)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path=dict.fromkeys(BRIEF_PATHS, brief_bytes),
    )
    app.add_middleware(RequestIDMiddleware)
    for module in (jobs, generation, models, tasks, deliveries, keys, health, sites):
        app.include_router(module.router)
    for compat in (openai_compat, ollama_compat):
        app.include_router(compat.router)
    return app
