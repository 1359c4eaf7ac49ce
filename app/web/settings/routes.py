"""The settings area (placeholder until it is built)."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.get("/")
def index() -> str:
    """Show the settings page."""
    return render_template("placeholder.html", area="settings")
