"""The migrations build exactly the schema the models describe, on each backend."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

from shared import migrate
from shared.db import make_engine


def test_migrations_match_the_models_and_run_both_ways(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.upgrade(database_url)  # applying twice is a no-op
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection), SQLModel.metadata
            )
        assert differences == []
        with engine.begin() as connection:
            config = migrate.alembic_config(database_url)
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        migrate.upgrade(database_url)
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(
                migrate.alembic_config(database_url)
            ).get_current_head()
            assert MigrationContext.configure(connection).get_current_revision() == head
    finally:
        engine.dispose()
