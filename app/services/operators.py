"""Operators: people who log in to the dashboard. Passwords hashed with scrypt."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from app.db import db
from app.models import Operator, utcnow

MIN_PASSWORD = 12
# Checked against when the email is unknown, so a login takes as long either way.
_DUMMY_HASH = generate_password_hash("relayboard-timing-equaliser", method="scrypt")


class OperatorError(ValueError):
    """An operator cannot be created as asked; the message says why."""


def exists() -> bool:
    """Say whether any operator exists (before that, only /setup is open)."""
    return bool(db.session.scalar(select(func.count()).select_from(Operator)))


def normalise_email(email: str) -> str:
    """Return the normalised form of an operator's email, or raise OperatorError."""
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise OperatorError(str(exc)) from None


def check_password(password: str) -> None:
    """Refuse a password that is too weak to guard a mail gateway."""
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"the password must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise OperatorError("the password must be at most 1024 characters")


def create(email: str, password: str) -> Operator:
    """Create an operator."""
    address = normalise_email(email)
    check_password(password)
    if db.session.scalar(select(Operator.id).where(Operator.email == address)):
        raise OperatorError(f"an operator {address} already exists")
    operator = Operator(email=address, password_hash=generate_password_hash(password, "scrypt"))
    db.session.add(operator)
    db.session.commit()
    return operator


def authenticate(email: str, password: str) -> Operator | None:
    """Return the operator with that email and password, or None."""
    try:
        address = normalise_email(email)
    except OperatorError:
        address = ""
    operator = db.session.scalar(select(Operator).where(Operator.email == address))
    if operator is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(operator.password_hash, password):
        return None
    operator.last_login_at = utcnow()
    db.session.commit()
    return operator


def get(operator_id: str) -> Operator | None:
    """Return an operator by session id."""
    try:
        return db.session.get(Operator, int(operator_id))
    except ValueError:
        return None
