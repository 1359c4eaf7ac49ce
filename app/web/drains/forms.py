"""Forms of the drains area."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, SubmitField

ALL = ""  # the choice that releases all held mail, whatever relay it waits for


class ReleaseForm(FlaskForm):
    """Release held mail through a new drain: all of it, or the mail held for one relay."""

    relay = SelectField("Held mail to release", choices=[SelectChoice(ALL, "All held mail")])
    submit = SubmitField("Release held mail")

    def relay_id(self) -> int | None:
        """Return the chosen relay's id, or None for all held mail (after validation)."""
        return int(self.relay.data) if self.relay.data else None
