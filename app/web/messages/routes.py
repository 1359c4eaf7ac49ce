"""The messages area (placeholder until it is built)."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("messages", __name__, url_prefix="/messages")


@bp.get("/")
def index() -> str:
    """Show the messages page."""
    return render_template("placeholder.html", area="messages")
