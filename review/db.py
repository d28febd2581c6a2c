"""The console's tables (SQLAlchemy Core) and opening a database: engine, pragmas, Alembic upgrade.

Times are UTC seconds since the epoch (floats), the same on SQLite and PostgreSQL. The schema
itself is created and changed only by the Alembic migrations in ``review/migrations``; the
:class:`~sqlalchemy.Table` objects here describe it for queries and must follow them.

SQLite (the default) is opened with ``secure_delete=ON`` (deleted crops are overwritten on
disk, not just unlinked), WAL and a busy timeout; PostgreSQL through psycopg 3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()

items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("camera_id", String(64), nullable=False),
    Column("track_id", Integer, nullable=False),
    Column("primary_event_id", String(36), nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("similarity", Float, nullable=False),
    Column("index_version", String(128), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("first_verdict_at", Float),
    Column("decided_at", Float),
    Column("crop_purged_at", Float),
    Column("released_at", Float),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("event_time", Float, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("similarity", Float, nullable=False),
    Column("payload", Text, nullable=False),
)

crops = Table(
    "crops", metadata,
    Column("event_id", String(36), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("jpeg", LargeBinary, nullable=False),
    Column("received_at", Float, nullable=False),
)

verdicts = Table(
    "verdicts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("current", Boolean, nullable=False),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("item_id", Integer),
    Column("event_id", String(36)),
    Column("detail", Text, nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("disabled", Boolean, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
)


def default_database_url(state_dir: str | Path) -> str:
    """``sqlite:///<state_dir>/review.sqlite3`` (the default of ``review.database_url``)."""
    return f"sqlite:///{Path(state_dir) / 'review.sqlite3'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA secure_delete=ON")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def open_engine(url: str) -> Engine:
    """Create the engine for ``url`` (SQLite or PostgreSQL) and upgrade the schema to the newest migration.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a SQLAlchemy URL.
        sqlalchemy.exc.OperationalError: the database cannot be reached or created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    upgrade(engine)
    return engine


def upgrade(engine: Engine) -> None:
    """Run the Alembic migrations up to ``head`` on ``engine`` (idempotent)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    logger.debug("review database at %s is at the newest migration", engine.url.render_as_string(hide_password=True))
