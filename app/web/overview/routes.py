"""The overview area (placeholder until it is built)."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint(
    "overview",
    __name__,
)


@bp.get("/")
def index() -> str:
    """Show the overview page."""
    return render_template("placeholder.html", area="overview")
