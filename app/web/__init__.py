"""The operators' web pages: blueprints, sign-in, and the access rule they share."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, redirect, request, url_for
from flask_login import current_user

from app.extensions import login_manager
from app.models import utcnow
from app.services import operators
from app.web.render import htmx

# Endpoints open without an operator session (API keys and signatures guard their own).
PUBLIC_ENDPOINTS = {"auth.login", "auth.setup", "static", "health.healthz", "status.page"}
PUBLIC_PREFIXES = ("api.", "hooks.")


def register(app: Flask) -> None:
    """Register the dashboard blueprints and require a signed-in operator for them."""
    from app.web.auth.routes import bp as auth_bp

    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in."
    login_manager.login_message_category = "info"
    login_manager.user_loader(operators.get)
    htmx.init_app(app)
    app.jinja_env.globals["now_utc"] = utcnow
    app.register_blueprint(auth_bp)
    for module in ("overview", "relays", "messages", "events", "settings"):
        try:
            blueprint = __import__(f"app.web.{module}.routes", fromlist=["bp"]).bp
        except ModuleNotFoundError:
            continue  # an area not built yet
        app.register_blueprint(blueprint)

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


def _go(location: str) -> Response:
    """Redirect; for htmx, ask the browser to load the page (not to swap it into a widget)."""
    if htmx:
        response = Response(status=401)
        response.headers["HX-Redirect"] = location
        return response
    return redirect(location)  # type: ignore[return-value]
