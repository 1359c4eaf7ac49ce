"""Flask extensions, created here and bound in the app factory with init_app."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()


def _client_address() -> str:
    from flask import request

    return request.remote_addr or "unknown"


limiter = Limiter(key_func=_client_address, headers_enabled=True)
