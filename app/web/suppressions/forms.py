"""Forms of the suppressions area."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import Form, HiddenField, StringField
from wtforms.validators import InputRequired, Length, Optional

from app.services.suppressions import MAX_SEARCH

MAX_ADDRESS = 320


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class SuppressionSearchForm(Form):
    """Search the suppression list; read from the query string (GET), so no CSRF token."""

    q = StringField(
        "Address",
        filters=[_strip],
        validators=[
            Optional(),
            Length(max=MAX_SEARCH, message=f"At most {MAX_SEARCH} characters."),
        ],
        render_kw={"placeholder": "part of an address", "type": "search", "autocomplete": "off"},
    )

    def search(self) -> str | None:
        """Return the text to search for (after validation), or None for the whole list."""
        return self.q.data or None

    def args(self) -> dict[str, str]:
        """Return the search as query arguments, for links and the lift buttons."""
        return {"q": self.q.data} if self.q.data and not self.q.errors else {}


class LiftForm(FlaskForm):
    """Lift one address's suppression (the table's per-row button)."""

    address = HiddenField(
        "Address",
        filters=[_strip],
        validators=[InputRequired("Say which address to lift."), Length(max=MAX_ADDRESS)],
    )
