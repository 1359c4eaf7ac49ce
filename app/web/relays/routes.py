"""The relays area (placeholder until it is built)."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("relays", __name__, url_prefix="/relays")


@bp.get("/")
def index() -> str:
    """Show the relays page."""
    return render_template("placeholder.html", area="relays")
