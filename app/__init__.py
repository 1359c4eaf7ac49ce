"""Relayboard: a self-hosted outbound email gateway with an operations dashboard."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, jsonify, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import logs
from app.config import PROJECT_ROOT, Settings
from app.db import db, reachability
from app.db import init_app as init_db
from app.extensions import csrf, migrate

__all__ = ["create_app"]

RETRY_AFTER_SECONDS = 5  # what a client is told to wait while the database is unreachable

# Added to every response that does not set its own.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class _SessionInterface(SecureCookieSessionInterface):
    """The signed-cookie session, not opened at all for the API, webhooks and health checks."""

    stateless = ("/api/", "/hooks/", "/healthz")

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(self.stateless):
            return None  # Flask substitutes a null session: nothing read, nothing written
        return super().open_session(app, request)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create the Relayboard application; `config` overrides settings (tests pass a Settings)."""
    config = dict(config or {})
    settings: Settings = config.pop("SETTINGS", None) or Settings.from_env()
    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # Retired keys still verify sessions signed before a rotation.
        SECRET_KEY_FALLBACKS=list(settings.old_secret_keys),
        # base64 inflates attachments by a third; leave room for the JSON around them.
        MAX_CONTENT_LENGTH=settings.max_message_bytes * 4 // 3 + 64 * 1024,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        RELAYBOARD=settings,
    )
    app.config.update(config)
    app.session_interface = _SessionInterface()
    logs.configure(settings.log_format, settings.log_level)

    init_db(app, settings.database_url)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    _register_blueprints(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(PoolTimeout, database_unavailable)
    return app


def database_unavailable(exc: Exception) -> tuple[Response, int]:
    """Answer 503 with Retry-After while the database cannot be reached: nothing was stored."""
    reachability.failed(exc, "web")
    message = (
        "the database cannot be reached right now; nothing was stored. "
        f"Try again in {RETRY_AFTER_SECONDS} seconds."
    )
    if request.path.startswith(("/api/", "/hooks/", "/healthz")):
        error = {"code": "database_unavailable", "message": message, "fields": {}}
        if request.path.startswith("/healthz"):
            response = jsonify(status="error", database="unreachable", error=error)
        else:
            response = jsonify(error=error)
    else:
        response = Response(message[:1].upper() + message[1:], mimetype="text/plain")
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, 503


def _register_blueprints(app: Flask) -> None:
    """Register every area of the app, each by name."""
    from app.api.routes import bp as api
    from app.hooks import bp as hooks
    from app.web import init_app as init_web
    from app.web.auth.routes import bp as auth
    from app.web.drains.routes import bp as drains
    from app.web.events.routes import bp as events
    from app.web.health import bp as health
    from app.web.messages.routes import bp as messages
    from app.web.overview.routes import bp as overview
    from app.web.relays.routes import bp as relays
    from app.web.settings.routes import bp as settings
    from app.web.suppressions.routes import bp as suppressions

    csrf.exempt(api)  # API keys, not sessions: no cross-site request can carry one
    csrf.exempt(hooks)  # signed by the ESP: a forged request has no valid signature
    areas = (
        api,
        hooks,
        health,
        auth,
        overview,
        relays,
        drains,
        messages,
        events,
        suppressions,
        settings,
    )
    for blueprint in areas:
        app.register_blueprint(blueprint)
    init_web(app)
