"""Render a whole page, or just its live part for an htmx request."""

from __future__ import annotations

from typing import Any

from flask import Response, make_response, render_template
from flask_htmx import HTMX

htmx = HTMX()


def page_or_fragment(page: str, fragment: str, **context: Any) -> Response:
    """Render `page`, or `fragment` alone when htmx asks (not when it boosts a link)."""
    template = fragment if htmx and not htmx.boosted else page
    response = make_response(render_template(template, **context))
    response.vary.add("HX-Request")
    return response


def fragment(template: str, **context: Any) -> Response:
    """Render a partial that only htmx requests ask for."""
    response = make_response(render_template(template, **context))
    response.vary.add("HX-Request")
    return response


def flash_trigger(response: Response, text: str, category: str = "success") -> Response:
    """Show a flash message after an htmx swap (app.js listens for the 'flash' event)."""
    import json

    response.headers["HX-Trigger"] = json.dumps({"flash": {"text": text, "category": category}})
    return response
