"""Settings read once, strictly, from the environment."""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.crypto import SecretBox

if TYPE_CHECKING:
    from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = PROJECT_ROOT / "instance"


class SettingsError(RuntimeError):
    """A setting in the environment has a value Relayboard cannot use."""


def _env_int(env: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _env_float(env: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} must be 1 or 0 (true/false, yes/no, on/off)")


def _env_choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return raw


def _env_rate(env: dict[str, str], name: str, default: str) -> str:
    """Return a rate limit string such as '100/second;6000/minute', checked, or 'off'."""
    raw = env.get(name) or default
    if raw == "off":
        return raw
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a rate limit (for example '6000 per minute' or "
            "'100/second;6000/minute', or 'off')"
        ) from None
    return raw


def _old_secret_keys(env: dict[str, str]) -> tuple[str, ...]:
    """Return the retired keys of RELAYBOARD_OLD_SECRET_KEYS (comma-separated), checked."""
    raw = env.get("RELAYBOARD_OLD_SECRET_KEYS") or ""
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    for number, key in enumerate(keys, start=1):
        if len(key) < 16:
            raise SettingsError(
                f"RELAYBOARD_OLD_SECRET_KEYS: key {number} is shorter than 16 characters"
            )
    return keys


def _secret_key(env: dict[str, str], instance: Path) -> str:
    """Return RELAYBOARD_SECRET_KEY, or one generated once into the instance folder."""
    key = env.get("RELAYBOARD_SECRET_KEY")
    if key:
        if len(key) < 16:
            raise SettingsError("RELAYBOARD_SECRET_KEY must be at least 16 characters")
        return key
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: two workers starting at once must agree on one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


@dataclass(frozen=True)
class Settings:
    """Everything Relayboard reads from its environment."""

    instance_path: Path
    database_url: str
    secret_key: str
    scheduler: bool
    drain_interval: float
    log_format: str
    log_level: str
    max_message_bytes: int
    batch_size: int
    sessions_per_relay: int
    lease_seconds: int
    max_age_seconds: int
    connect_timeout: float
    command_timeout: float
    attempt_deadline: float
    connect_patience: float
    retry_base_seconds: float
    retry_max_seconds: float
    message_id_domain: str | None
    ca_file: str | None
    routing: str = "failover"
    api_rate_limit: str = "6000 per minute"
    ratelimit_storage: str = "memory://"
    old_secret_keys: tuple[str, ...] = ()
    stop_grace: float = 30.0
    # A drain's ramp: the backlog after a maintenance goes out at this many messages a
    # second, times `drain_growth` every `drain_step` seconds (up to the relay's max rate).
    drain_initial_rate: float = 5.0
    drain_growth: float = 2.0
    drain_step: float = 30.0
    drain_ramp: bool = True  # off: a drain releases its whole backlog at once

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read and check every setting; raise SettingsError on the first bad one."""
        env = dict(os.environ if env is None else env)
        instance = Path(env.get("RELAYBOARD_INSTANCE_PATH") or DEFAULT_INSTANCE)
        database_url = (
            env.get("RELAYBOARD_DATABASE_URL") or f"sqlite:///{instance / 'relayboard.db'}"
        )
        if "://" not in database_url:
            raise SettingsError(
                f"RELAYBOARD_DATABASE_URL={database_url!r} is not a database URL "
                "(for example sqlite:///path/to.db or postgresql+psycopg://user@host/db)"
            )
        if database_url.startswith("postgresql://"):
            database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
        ca_file = env.get("RELAYBOARD_CA_FILE") or None
        if ca_file and not Path(ca_file).is_file():
            raise SettingsError(f"RELAYBOARD_CA_FILE={ca_file!r} is not a readable file")
        return cls(
            instance_path=instance,
            database_url=database_url,
            secret_key=_secret_key(env, instance),
            scheduler=_env_bool(env, "RELAYBOARD_SCHEDULER", True),
            drain_interval=_env_float(env, "RELAYBOARD_DRAIN_INTERVAL", 2.0, minimum=0.05),
            log_format=_env_choice(env, "RELAYBOARD_LOG_FORMAT", "text", ("text", "json")),
            log_level=_env_choice(
                env, "RELAYBOARD_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            max_message_bytes=_env_int(
                env, "RELAYBOARD_MAX_MESSAGE_BYTES", 10 * 1024 * 1024, minimum=1024
            ),
            batch_size=_env_int(env, "RELAYBOARD_BATCH_SIZE", 200, minimum=1),
            sessions_per_relay=_env_int(env, "RELAYBOARD_SESSIONS_PER_RELAY", 8, minimum=1),
            lease_seconds=_env_int(env, "RELAYBOARD_LEASE_SECONDS", 300, minimum=5),
            max_age_seconds=_env_int(env, "RELAYBOARD_MAX_AGE", 5 * 24 * 3600, minimum=60),
            connect_timeout=_env_float(env, "RELAYBOARD_CONNECT_TIMEOUT", 10.0, minimum=0.05),
            command_timeout=_env_float(env, "RELAYBOARD_COMMAND_TIMEOUT", 60.0, minimum=0.05),
            attempt_deadline=_env_float(env, "RELAYBOARD_ATTEMPT_DEADLINE", 120.0, minimum=0.1),
            connect_patience=_env_float(env, "RELAYBOARD_CONNECT_PATIENCE", 2.0, minimum=0.01),
            # At least a second: a pass must never pick its own deferrals up again at once.
            retry_base_seconds=_env_float(env, "RELAYBOARD_RETRY_BASE", 60.0, minimum=1.0),
            retry_max_seconds=_env_float(env, "RELAYBOARD_RETRY_MAX", 3600.0, minimum=1.0),
            message_id_domain=env.get("RELAYBOARD_MESSAGE_ID_DOMAIN") or None,
            ca_file=ca_file,
            api_rate_limit=_env_rate(env, "RELAYBOARD_API_RATE_LIMIT", "6000 per minute"),
            ratelimit_storage=env.get("RELAYBOARD_RATELIMIT_STORAGE") or "memory://",
            routing=_env_choice(
                env, "RELAYBOARD_ROUTING", "failover", ("failover", "load_balance")
            ),
            old_secret_keys=_old_secret_keys(env),
            stop_grace=_env_float(env, "RELAYBOARD_STOP_GRACE", 30.0, minimum=0.0),
            drain_initial_rate=_env_float(
                env, "RELAYBOARD_DRAIN_INITIAL_RATE", 5.0, minimum=0.01
            ),
            drain_growth=_env_float(env, "RELAYBOARD_DRAIN_GROWTH", 2.0, minimum=1.0),
            drain_step=_env_float(env, "RELAYBOARD_DRAIN_STEP", 30.0, minimum=0.1),
            drain_ramp=_env_bool(env, "RELAYBOARD_DRAIN_RAMP", True),
        )

    @functools.cached_property
    def secret_box(self) -> SecretBox:
        """The box stored secrets are sealed in: the current key, then the retired ones."""
        return SecretBox((self.secret_key, *self.old_secret_keys))


def settings_of(app: Flask) -> Settings:
    """Return the Settings an app was created with."""
    settings: Settings = app.config["RELAYBOARD"]
    return settings
