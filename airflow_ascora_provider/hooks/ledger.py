"""Airflow glue for the migration ledger.

Every task of a migration run opens the ledger, so this hook is about finding the same database
from any worker and not paying for it repeatedly:

* Resolution order: Airflow connection ``ledger_conn_id`` -> ``ASCORA_LEDGER_URL`` -> a SQLite
  file in ``$AIRFLOW_HOME``. The fallbacks exist so a first sample run works with zero setup;
  a missing connection is therefore normal, but any *other* failure to read connections (API
  server down, permission denied) is raised, because silently falling back to a local SQLite
  file on one worker would split the ledger in two and break retry/rollback guarantees.
* Engines are cached per URL in the process: a task may build many hooks, and every engine is a
  connection pool. After ``fork`` (Airflow's task runner forks) the child drops the inherited pools
  without closing them, as SQLAlchemy requires, so parent and child never share a socket.
* ``get_ledger`` migrates once per process and (url, schema), not on every call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine

from airflow_ascora_provider.ledger import Ledger

try:  # Airflow 3 Task SDK
    from airflow.sdk.bases.hook import BaseHook
except ImportError:  # pragma: no cover - Airflow 2 style layout
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]

try:
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError, ErrorType
except ImportError:  # pragma: no cover
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef]

    AirflowRuntimeError = None  # type: ignore[assignment,misc]
    ErrorType = None  # type: ignore[assignment,misc]

ENV_URL = "ASCORA_LEDGER_URL"
ENV_SCHEMA = "ASCORA_LEDGER_SCHEMA"  # optional PostgreSQL schema to go with ENV_URL
DEFAULT_SQLITE_NAME = "ascora_ledger.sqlite"

_ENGINES: dict[str, Engine] = {}
_MIGRATED: set[tuple[str, str | None]] = set()
_LOCK = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (created on first use)."""
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = create_engine(url, pool_pre_ping=True)
        return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (tests, or a worker shutting down)."""
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _MIGRATED.clear()


def _forget_engines_after_fork() -> None:
    # close=False: the pooled connections belong to the parent; closing them here would end the
    # parent's sessions. Just drop them and let the child open its own.
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()
    _MIGRATED.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, AirflowNotFoundException):
        return True
    if AirflowRuntimeError is not None and isinstance(exc, AirflowRuntimeError):
        return getattr(getattr(exc, "error", None), "error", None) == ErrorType.CONNECTION_NOT_FOUND
    return False


def default_sqlite_path() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / DEFAULT_SQLITE_NAME


class LedgerHook(BaseHook):
    """Opens the migration ledger (see :class:`~airflow_ascora_provider.ledger.Ledger`).

    :param ledger_conn_id: Airflow connection of type ``ascora_ledger`` (host = SQLAlchemy URL),
        ``postgres`` or ``sqlite``. Optional: see the module docstring for the fallbacks.
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = "ascora_ledger_default"
    conn_type = "ascora_ledger"
    hook_name = "Ascora migration ledger"

    def __init__(self, ledger_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger_conn_id = ledger_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["port", "login", "password", "schema"],
            "relabeling": {"host": "SQLAlchemy URL"},
            "placeholders": {
                "host": "postgresql+psycopg2://user:pass@host:5432/db",
                "extra": '{"schema": "ascora_ledger"}',
            },
        }

    def _connection(self):
        try:
            return self.get_connection(self.ledger_conn_id)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    def resolve(self) -> tuple[str, str | None]:
        """Return ``(sqlalchemy_url, schema)`` following the documented resolution order."""
        conn = self._connection()
        if conn is not None:
            extra = conn.extra_dejson or {}
            schema = extra.get("schema") or None
            conn_type = (conn.conn_type or "").lower()
            if conn_type == "sqlite":
                path = conn.host or conn.schema
                if not path:
                    raise ValueError(f"sqlite connection {self.ledger_conn_id!r} has no host/path")
                return f"sqlite:///{path}", None
            if conn_type in ("postgres", "postgresql"):
                url = URL.create(
                    "postgresql+psycopg2",
                    username=conn.login or None,
                    password=conn.password or None,
                    host=conn.host or None,
                    port=conn.port or None,
                    database=conn.schema or None,
                )
                return url.render_as_string(hide_password=False), schema
            if conn_type == self.conn_type:
                if not conn.host:
                    raise ValueError(f"connection {self.ledger_conn_id!r} needs the SQLAlchemy URL in host")
                return conn.host, schema
            raise ValueError(
                f"connection {self.ledger_conn_id!r} has type {conn.conn_type!r}; "
                f"expected {self.conn_type!r}, 'postgres' or 'sqlite'"
            )
        env_url = os.environ.get(ENV_URL)
        if env_url:
            return env_url, os.environ.get(ENV_SCHEMA) or None
        path = default_sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}", None

    def get_ledger(self) -> Ledger:
        """A migrated :class:`Ledger` on the resolved database."""
        url, schema = self.resolve()
        ledger = Ledger(get_engine(url), schema=schema)
        if (url, schema) not in _MIGRATED:
            ledger.migrate()
            with _LOCK:
                _MIGRATED.add((url, schema))
        return ledger

    def get_conn(self) -> Ledger:
        return self.get_ledger()

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI "Test" button: can we reach the database and read the version?"""
        try:
            url, schema = self.resolve()
            version = Ledger(get_engine(url), schema=schema).version()
        except Exception as exc:
            return False, str(exc)
        return True, f"Ledger reachable, schema version {version}"
