"""The operators' web pages: blueprints, sign-in, and the access rule they share."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, redirect, request, url_for
from flask_login import current_user

from app.config import settings_of
from app.extensions import login_manager
from app.models import Relay, utcnow
from app.services import operators
from app.services.relays import unusable
from app.web.render import htmx

# Endpoints open without an operator session (API keys and signatures guard their own).
PUBLIC_ENDPOINTS = {"auth.login", "auth.setup", "static", "health.healthz"}
PUBLIC_PREFIXES = ("api.", "hooks.")


def init_app(app: Flask) -> None:
    """Set up sign-in and require a signed-in operator for every page but the public ones."""
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in."
    login_manager.login_message_category = "info"
    login_manager.user_loader(operators.get)
    htmx.init_app(app)
    app.jinja_env.globals["now_utc"] = utcnow
    app.jinja_env.globals["unusable"] = _unusable

    @app.before_request
    def require_operator() -> Any:
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC_ENDPOINTS or endpoint.startswith(PUBLIC_PREFIXES):
            return None
        if not operators.exists():
            return _go(url_for("auth.setup"))
        if not current_user.is_authenticated:
            return _go(url_for("auth.login", next=request.full_path.rstrip("?")))
        return None


def _unusable(relay: Relay) -> str | None:
    """Say why no message can go through a relay whatever its state (pages show it)."""
    # (app.web.relays, the area, would shadow app.services.relays here: import the function)
    return unusable(relay, settings_of(current_app).secret_box)


def _go(location: str) -> Response:
    """Redirect; for htmx, ask the browser to load the page (not to swap it into a widget)."""
    if htmx:
        response = Response(status=401)
        response.headers["HX-Redirect"] = location
        return response
    return redirect(location)  # type: ignore[return-value]
