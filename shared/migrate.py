"""Applying Alembic migrations from code (`kiln migrate`, `kiln up`, the tests)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.config import get_settings
from shared.db import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str | None = None) -> None:
    """Bring the database at `url` (default: the configured one) to the newest schema."""
    url = url or get_settings().sqlalchemy_url
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
