"""The events area (placeholder until it is built)."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("events", __name__, url_prefix="/events")


@bp.get("/")
def index() -> str:
    """Show the events page."""
    return render_template("placeholder.html", area="events")
