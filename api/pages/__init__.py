"""The jobs pages: server-rendered HTML at `/`, signed in with an API key kept in a cookie."""

from api.pages.routes import STATIC_PATH, router, static_files

__all__ = ["STATIC_PATH", "router", "static_files"]
