"""Forms of the messages area."""

from __future__ import annotations

from typing import Any

from wtforms import (
    DateTimeLocalField,
    Form,
    IntegerField,
    SelectChoice,
    SelectField,
    StringField,
)
from wtforms.validators import Length, NumberRange, Optional, ValidationError

from app.models import STATUSES
from app.services.operations import MessageFilter

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class MessageFilterForm(Form):
    """Filter the messages list; read from the query string (GET), so no CSRF token."""

    status = SelectField(
        "Status",
        choices=[SelectChoice("", "any"), *(SelectChoice(s) for s in STATUSES)],
        default="",
    )
    recipient = StringField(
        "Recipient",
        filters=[_strip],
        validators=[Optional(), Length(max=320, message="At most 320 characters.")],
        render_kw={"placeholder": "part of an address", "type": "search"},
    )
    tag = StringField(
        "Tag",
        filters=[_strip],
        validators=[Optional(), Length(max=64, message="At most 64 characters.")],
        render_kw={"placeholder": "exact tag", "type": "search"},
    )
    since = DateTimeLocalField("Since (UTC)", format=DATETIME_FORMATS, validators=[Optional()])
    until = DateTimeLocalField("Until (UTC)", format=DATETIME_FORMATS, validators=[Optional()])
    before = IntegerField("Before id", validators=[Optional(), NumberRange(min=1)])

    def validate_until(self, field: DateTimeLocalField) -> None:
        """Refuse an empty time window."""
        if field.data and self.since.data and field.data <= self.since.data:
            raise ValidationError("Must be after “since”.")

    def to_filter(self) -> MessageFilter:
        """Return the service's filter for a validated form."""
        return MessageFilter(
            status=self.status.data or None,
            recipient=self.recipient.data or None,
            tag=self.tag.data or None,
            since=self.since.data,
            until=self.until.data,
        )

    def args(self) -> dict[str, str]:
        """Return the filter as query arguments (no page), for links and polls."""
        values = {
            "status": self.status.data or "",
            "recipient": self.recipient.data or "",
            "tag": self.tag.data or "",
            "since": self.since.raw_data[0] if self.since.raw_data else "",
            "until": self.until.raw_data[0] if self.until.raw_data else "",
        }
        return {k: v for k, v in values.items() if v}
