"""Forms of the settings area."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import RadioField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from app.services.api_keys import READ_ALL, SEND

SCOPE_CHOICES = [
    SelectChoice(SEND, "Send, and read only the messages it sent"),
    SelectChoice(READ_ALL, "Send, and read every message (for monitoring or support tools)"),
]


class ApiKeyForm(FlaskForm):
    """Create an API key; the service checks the characters and that the name is free."""

    name = StringField(
        "Name",
        validators=[DataRequired(message="Give the key a name."), Length(max=64)],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )
    scope = RadioField("What it may read", choices=SCOPE_CHOICES, default=SEND)
    submit = SubmitField("Create API key")


class ScopeForm(FlaskForm):
    """Change what an existing key may read."""

    scope = RadioField("Scope", choices=[SelectChoice(SEND), SelectChoice(READ_ALL)])
