"""Forms of the overview: the global pause of delivery."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from app.services.pause import MAX_NOTE


class PauseForm(FlaskForm):
    """Pause all delivery, with a note everyone sees while it lasts."""

    note = TextAreaField(
        "Why pause all delivery?",
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
        validators=[
            DataRequired("Say why: the note is shown to everyone while delivery is paused."),
            Length(max=MAX_NOTE, message=f"Keep the note under {MAX_NOTE} characters."),
        ],
    )
    submit = SubmitField("Pause all delivery")
