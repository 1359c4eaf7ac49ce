"""Render a whole page, or just its live part for an htmx request."""

from __future__ import annotations

from typing import Any

from flask import Response, make_response, render_template
from flask_htmx import HTMX

htmx = HTMX()


def wants_fragment() -> bool:
    """Say whether htmx asks for a partial (a boost or a history restore needs the page)."""
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def page_or_fragment(page: str, fragment: str, **context: Any) -> Response:
    """Render `page`, or `fragment` alone when htmx asks for a partial."""
    template = fragment if wants_fragment() else page
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
