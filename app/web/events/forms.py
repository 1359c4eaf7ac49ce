"""Forms of the events area."""

from __future__ import annotations

from wtforms import DateTimeLocalField, Form, SelectChoice, SelectField, StringField
from wtforms.validators import Optional, Regexp, ValidationError

from app.services.operations import EVENT_GROUPS, EventFilter
from app.web.messages.forms import DATETIME_FORMATS

GROUP_LABELS = {
    "incidents": "failovers, circuits and health",
    "all": "everything",
    "failovers": "failovers",
    "circuits": "circuit transitions",
    "health": "health checks",
    "messages": "message events",
}


class EventFilterForm(Form):
    """Filter the event log; read from the query string (GET), so no CSRF token."""

    group = SelectField(
        "Show",
        choices=[SelectChoice(g, GROUP_LABELS[g]) for g in EVENT_GROUPS],
        default="incidents",
    )
    relay = SelectField("Relay", choices=[SelectChoice("", "any")], default="")
    since = DateTimeLocalField("Since (UTC)", format=DATETIME_FORMATS, validators=[Optional()])
    until = DateTimeLocalField("Until (UTC)", format=DATETIME_FORMATS, validators=[Optional()])
    before = StringField(
        "Page", validators=[Optional(), Regexp(r"^[eh][1-9][0-9]{0,17}$", message="Not a page.")]
    )

    def validate_until(self, field: DateTimeLocalField) -> None:
        """Refuse an empty time window."""
        if field.data and self.since.data and field.data <= self.since.data:
            raise ValidationError("Must be after “since”.")

    def to_filter(self) -> EventFilter:
        """Return the service's filter for a validated form."""
        return EventFilter(
            group=self.group.data or "incidents",
            relay_id=int(self.relay.data) if self.relay.data else None,
            since=self.since.data,
            until=self.until.data,
        )

    def args(self) -> dict[str, str]:
        """Return the filter as query arguments (no page), for links, polls and the export."""
        values = {
            "group": self.group.data if self.group.data != "incidents" else "",
            "relay": self.relay.data or "",
            "since": self.since.raw_data[0] if self.since.raw_data else "",
            "until": self.until.raw_data[0] if self.until.raw_data else "",
        }
        return {k: v or "" for k, v in values.items() if v}
