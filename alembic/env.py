"""Alembic environment: the URL comes from the app settings, the target from db_models."""

from logging.config import fileConfig

from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.schema import SchemaItem

from alembic import context
from config import get_settings
from db_models import Base, exists_on

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def include_object(
    obj: SchemaItem,
    _name: str | None,
    _type: str,
    _reflected: bool,
    _compare_to: SchemaItem | None,
) -> bool:
    """Skip schema objects that exist only on PostgreSQL when comparing another dialect."""
    return exists_on(obj, context.get_context().dialect.name)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=include_object,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=get_settings().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=get_settings().is_sqlite,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Tests hand in their own connection; otherwise connect to the configured database.
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(get_settings().database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
