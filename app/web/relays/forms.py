"""Forms of the relays area."""

from __future__ import annotations

import ipaddress
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    Field,
    FloatField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    StopValidation,
    ValidationError,
)

from app.services.maintenance import MAX_NOTE
from app.services.relays import MAINTENANCE_POLICIES, PROVIDERS, RelayError

SECURITY_CHOICES = [
    SelectChoice("starttls", "STARTTLS (usually port 587)"),
    SelectChoice("tls", "TLS from the start (usually port 465)"),
    SelectChoice("none", "None: plain text (local relays only)"),
]
PROVIDER_LABELS = {
    "generic": "Generic SMTP",
    "mailersend": "MailerSend",
    "sendgrid": "SendGrid",
    "mailgun": "Mailgun",
    "ses": "Amazon SES",
    "postfix": "Own Postfix",
    "log": "Test mode: log, do not send",
}
POLICY_LABELS = {
    "hold": "Hold its mail until maintenance ends",
    "reroute": "Reroute its mail through the next relay",
}


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _host_name(form: FlaskForm, field: Field) -> None:
    """Accept a DNS name or an IP address; point out a scheme or a port written into it."""
    host = field.data or ""
    if "://" in host or "/" in host:
        raise ValidationError("Give the host alone, without a scheme or path.")
    if any(c.isspace() for c in host):
        raise ValidationError("A host name has no spaces.")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ValidationError("Put the port in the Port field.") from None
        return
    labels = host.rstrip(".").split(".")
    if not all(label and len(label) <= 63 for label in labels) or not all(
        c.isalnum() or c in "-_" for label in labels for c in label
    ):
        raise ValidationError("Not a host name or IP address.")


class RelayForm(FlaskForm):
    """Add or change a relay. The password is write-only: it is never rendered back."""

    name = StringField("Name", filters=[_strip], validators=[DataRequired(), Length(max=64)])
    host = StringField(
        "Host", filters=[_strip], validators=[DataRequired(), Length(max=255), _host_name]
    )
    port = IntegerField(
        "Port",
        default=587,
        validators=[
            InputRequired("Give a port."),
            NumberRange(1, 65535, "A port is a number from 1 to 65535."),
        ],
    )
    security = SelectField("Security", choices=SECURITY_CHOICES, default="starttls")
    tls_verify = BooleanField("Verify the server's TLS certificate", default=True)
    username = StringField("Username", filters=[_strip], validators=[Length(max=255)])
    password = PasswordField("Password", validators=[Length(max=1024)])
    priority = IntegerField(
        "Priority",
        validators=[Optional(), NumberRange(min=0, message="Zero or more; lower goes first.")],
    )
    weight = IntegerField(
        "Weight", default=1, validators=[InputRequired(), NumberRange(min=0, message="0 or more.")]
    )
    provider = SelectField(
        "Provider",
        choices=[SelectChoice(p, PROVIDER_LABELS.get(p, p)) for p in PROVIDERS],
        default="generic",
    )
    max_per_connection = IntegerField(
        "Messages per connection",
        default=100,
        validators=[InputRequired(), NumberRange(min=1, message="At least 1.")],
    )
    max_rate = FloatField(
        "Rate limit (messages per second)",
        validators=[Optional(), NumberRange(min=0.001, message="More than 0, or leave blank.")],
    )
    maintenance_policy = SelectField(
        "During maintenance",
        choices=[SelectChoice(p, POLICY_LABELS.get(p, p)) for p in MAINTENANCE_POLICIES],
        default="reroute",
    )
    webhook_secret = PasswordField(
        "Webhook signing secret",
        validators=[Length(max=256, message="8 to 256 characters without spaces or line breaks.")],
    )
    breaker_threshold = IntegerField(
        "Failures that open the circuit",
        default=3,
        validators=[InputRequired(), NumberRange(min=1, message="At least 1.")],
    )
    breaker_open_seconds = IntegerField(
        "Seconds it stays open",
        default=1800,
        validators=[InputRequired(), NumberRange(min=1, max=7 * 86400, message="1 s to 7 days.")],
    )
    breaker_success_threshold = IntegerField(
        "Successful trials that close it",
        default=1,
        validators=[InputRequired(), NumberRange(min=1, message="At least 1.")],
    )
    unknown_retries = IntegerField(
        "Resends after a lost reply",
        default=3,
        validators=[InputRequired(), NumberRange(min=0, max=100, message="0 to 100.")],
    )
    submit = SubmitField("Save relay")

    # Set by the view on edit: a blank password then keeps the stored one.
    has_password = False

    def validate_username(self, field: Field) -> None:
        """Refuse line breaks, which would end an SMTP command."""
        if any(c in (field.data or "") for c in "\r\n\0"):
            raise ValidationError("A username has no line breaks.")

    def validate_password(self, field: Field) -> None:
        """Credentials come as a pair: a username needs a password and the reverse."""
        if field.data and any(c in field.data for c in "\r\n\0"):
            raise ValidationError("A password has no line breaks.")
        if field.data and not self.username.data:
            raise ValidationError("A password needs a username.")
        if self.username.data and not field.data and not self.has_password:
            raise ValidationError("Give the password for this username.")

    def values(self) -> dict[str, Any]:
        """Return the relay's values for the relays service."""
        return {
            "name": self.name.data,
            "host": self.host.data,
            "port": self.port.data,
            "security": self.security.data,
            "tls_verify": bool(self.tls_verify.data),
            "username": self.username.data or None,
            "password": self.password.data or None,
            "priority": self.priority.data,
            "weight": self.weight.data,
            "provider": self.provider.data,
            "max_per_connection": self.max_per_connection.data,
            "max_rate": self.max_rate.data,
            "maintenance_policy": self.maintenance_policy.data,
            "webhook_secret": self.webhook_secret.data or None,
            "breaker_threshold": self.breaker_threshold.data,
            "breaker_open_seconds": self.breaker_open_seconds.data,
            "breaker_success_threshold": self.breaker_success_threshold.data,
            "unknown_retries": self.unknown_retries.data,
        }

    def add_service_error(self, error: RelayError) -> None:
        """Show a service's refusal beside its field, or above the form."""
        field = self._fields.get(error.field or "")
        message = str(error)
        message = message[:1].upper() + message[1:] + "."
        if field is not None:
            field.errors = [*field.errors, message]
        else:
            self.form_errors.append(message)


class SendTestForm(FlaskForm):
    """Queue a test message through one relay."""

    recipient = EmailField(
        "Send to",
        filters=[_strip],
        validators=[
            DataRequired("Give an address to send the test to."),
            Length(max=320),
            Email("That is not an email address.", check_deliverability=False),
        ],
    )
    submit = SubmitField("Queue test email")


class CircuitForm(FlaskForm):
    """Force a circuit open or closed, with a note saying why."""

    state = SelectField(
        "Set the circuit",
        choices=[
            SelectChoice("open", "Open: send nothing through it"),
            SelectChoice("closed", "Closed: use it again"),
        ],
    )
    note = TextAreaField(
        "Note",
        filters=[_strip],
        validators=[
            DataRequired("Say why: the note is kept with the change."),
            Length(max=500),
        ],
    )
    submit = SubmitField("Set circuit")


def _note_field(label: str = "Note") -> TextAreaField:
    return TextAreaField(
        label,
        filters=[_strip],
        validators=[
            DataRequired("Say why: the note is kept with the change."),
            Length(max=MAX_NOTE, message=f"Keep the note under {MAX_NOTE} characters."),
        ],
    )


class StartMaintenanceForm(FlaskForm):
    """Put a relay in maintenance now, with a note saying why."""

    note = _note_field()
    submit = SubmitField("Start maintenance")


class EndMaintenanceForm(FlaskForm):
    """Take a relay out of maintenance and release its mail, with a note."""

    note = _note_field()
    submit = SubmitField("End maintenance")


class UtcDateTimeField(DateTimeLocalField):
    """A `datetime-local` input read as naive UTC; blank and unreadable values say so."""

    def process_formdata(self, valuelist: list[Any]) -> None:
        if valuelist and not " ".join(str(v) for v in valuelist).strip():
            self.data = None
            return
        super().process_formdata(valuelist)


def _time_required(form: FlaskForm, field: Field) -> None:
    if field.data is None and not field.process_errors:
        raise StopValidation("Give a date and time (UTC).")


UNREADABLE_TIME = "Not a date and time: pick one, or write it as 2025-06-01T14:00 (UTC)."


class PlanMaintenanceForm(FlaskForm):
    """Plan a maintenance window; the times are UTC."""

    starts_at = UtcDateTimeField(
        "Starts (UTC)", validators=[_time_required], invalid_value_message=UNREADABLE_TIME
    )
    ends_at = UtcDateTimeField(
        "Ends (UTC)", validators=[_time_required], invalid_value_message=UNREADABLE_TIME
    )
    note = _note_field()
    submit = SubmitField("Plan window")

    def add_service_error(self, error: Exception) -> None:
        """Show the maintenance service's refusal above the form."""
        message = str(error)
        self.form_errors.append(message[:1].upper() + message[1:] + ".")
