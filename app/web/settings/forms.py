"""Forms of the settings area."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length


class ApiKeyForm(FlaskForm):
    """Create an API key; the service checks the characters and that the name is free."""

    name = StringField(
        "Name",
        validators=[DataRequired(message="Give the key a name."), Length(max=64)],
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
    )
    submit = SubmitField("Create API key")
