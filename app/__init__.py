"""Relayboard: a self-hosted outbound email gateway with an operations dashboard."""

from __future__ import annotations

import inspect
import sqlite3
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy import Engine, event

from app import logs, writelock
from app.config import PROJECT_ROOT, Settings
from app.extensions import csrf, db, migrate

__all__ = ["create_app"]

# Added to every response that does not set its own.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Give SQLite WAL, a busy timeout and foreign keys.

    pysqlite opens a transaction only before a write, so readers never hold a lock and
    every write transaction here starts with its write: none can fail half-way with
    SQLITE_BUSY_SNAPSHOT, and writers queue on the busy timeout instead.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint={writelock.AUTOCHECKPOINT_PAGES}")
        cursor.close()


class _SessionInterface(SecureCookieSessionInterface):
    """The signed-cookie session, not opened at all for the API, webhooks and health checks."""

    stateless = ("/api/", "/hooks/", "/healthz")

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(self.stateless):
            return None  # Flask substitutes a null session: nothing read, nothing written
        return super().open_session(app, request)


class _Flask(Flask):
    """Flask, minus a per-hook coroutine check on every request: nothing here is async."""

    def ensure_sync(self, func: Any) -> Any:
        """Return views and hooks as they are (create_app refuses async ones)."""
        return func


def _refuse_async(app: Flask) -> None:
    """Fail at start-up if a view or hook is a coroutine function (ensure_sync won't wrap it)."""
    hooks = [
        *app.view_functions.values(),
        *(f for fs in app.before_request_funcs.values() for f in fs),
        *(f for fs in app.after_request_funcs.values() for f in fs),
        *(f for fs in app.teardown_request_funcs.values() for f in fs),
        *app.teardown_appcontext_funcs,
        *(
            handler
            for codes in app.error_handler_spec.values()
            for handlers in codes.values()
            for handler in handlers.values()
        ),
    ]
    found = [getattr(f, "__qualname__", repr(f)) for f in hooks if inspect.iscoroutinefunction(f)]
    if found:
        raise RuntimeError(f"async views or hooks are not supported here: {', '.join(found)}")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create the Relayboard application; `config` overrides settings (tests pass a Settings)."""
    config = dict(config or {})
    settings: Settings = config.pop("SETTINGS", None) or Settings.from_env()
    app = _Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    engine_options: dict[str, Any] = {"pool_pre_ping": True}
    if settings.database_url.startswith("sqlite"):
        engine_options = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        # base64 inflates attachments by a third; leave room for the JSON around them.
        MAX_CONTENT_LENGTH=settings.max_message_bytes * 4 // 3 + 64 * 1024,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        RELAYBOARD=settings,
    )
    app.config.update(config)
    app.session_interface = _SessionInterface()
    logs.configure(settings.log_format, settings.log_level)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)

    from app.api.routes import bp as api_bp
    from app.web.health import bp as health_bp

    csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)

    from app.web import register as register_web

    register_web(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        headers = response.headers
        present = {name.lower() for name in headers.keys()}  # noqa: SIM118 (Headers)
        for name, value in SECURITY_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        return response

    _refuse_async(app)
    return app


def settings_of(app: Flask) -> Settings:
    """Return the Settings an app was created with."""
    settings: Settings = app.config["RELAYBOARD"]
    return settings
