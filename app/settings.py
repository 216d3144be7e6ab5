"""The service's configuration: environment, `.env` and `/run/secrets/<name>`, validated once."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRETS_DIR = Path("/run/secrets")  # Docker and Kubernetes secrets, one file per variable
SECRET_PREFIX = "whsec_"  # noqa: S105 (a format marker, not a secret)
OPENAI_API_HOST = "api.openai.com"
API_VERSION_PATH = "/v1"


_S = TypeVar("_S", bound=BaseSettings)

UNSIGNED_SERVICES_WARNING = (
    "SIP_ROUTER_OUTBOUND_SECRET is not set: requests to the rule file's services and"
    " functions are sent unsigned, so they cannot tell them from anyone else's"
)


class ConfigurationError(Exception):
    """Invalid configuration; the message is one line naming the variable or file."""


def parse_webhook_secret(text: str) -> SecretStr:
    """Check one `whsec_<base64>` secret and return it wrapped; raise ValueError otherwise."""
    value = text.strip()
    if not value.startswith(SECRET_PREFIX):
        raise ValueError("each secret must start with 'whsec_'")
    encoded = value[len(SECRET_PREFIX) :].rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not base64") from None
    if len(key) < 16:
        raise ValueError("the secret's key is shorter than 16 bytes")
    return SecretStr(value)


class Settings(BaseSettings):
    """Every variable of the README's Configuration table; init keyword arguments beat the env."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), alias="OPENAI_WEBHOOK_SECRET"
    )
    openai_base_url: str = Field(default="https://api.openai.com/v1", alias="OPENAI_BASE_URL")
    rules: Path = Field(default=Path("routing_rules/rules.yaml"), alias="SIP_ROUTER_RULES")
    dry_run: bool = Field(default=False, alias="SIP_ROUTER_DRY_RUN")
    redis_url: SecretStr | None = Field(default=None, alias="SIP_ROUTER_REDIS_URL")
    admin_token: SecretStr | None = Field(default=None, alias="SIP_ROUTER_ADMIN_TOKEN")
    action_deadline_s: float = Field(default=5.0, gt=0, le=60, alias="SIP_ROUTER_ACTION_DEADLINE_S")
    max_event_age_s: float = Field(default=120.0, gt=0, alias="SIP_ROUTER_MAX_EVENT_AGE_S")
    timestamp_tolerance_s: float = Field(
        default=300.0, gt=0, alias="SIP_ROUTER_TIMESTAMP_TOLERANCE_S"
    )
    log_format: Literal["json", "text"] = Field(default="json", alias="SIP_ROUTER_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="SIP_ROUTER_LOG_LEVEL"
    )
    mask_numbers: bool = Field(default=True, alias="SIP_ROUTER_MASK_NUMBERS")
    # Each recorded call keeps its decision inputs (unmasked) for `replay`.
    keep_call_inputs: bool = Field(default=True, alias="SIP_ROUTER_KEEP_CALL_INPUTS")
    # What one HTTP client may hold (app/http/connection_limits.py), and the metrics port.
    max_connections: int = Field(default=2000, ge=1, alias="SIP_ROUTER_MAX_CONNECTIONS")
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=300, alias="SIP_ROUTER_REQUEST_TIMEOUT_S"
    )
    metrics_port: int | None = Field(default=None, ge=1, le=65535, alias="SIP_ROUTER_METRICS_PORT")
    memory_max_calls: int = Field(default=100_000, ge=1, alias="SIP_ROUTER_MEMORY_MAX_CALLS")
    reload_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, alias="SIP_ROUTER_RELOAD_TIMEOUT_S"
    )
    reload_memory_mb: int = Field(default=2048, ge=64, alias="SIP_ROUTER_RELOAD_MEMORY_MB")
    # Signs sip-router's requests to your own services; unset: unsigned.
    outbound_secret: SecretStr | None = Field(default=None, alias="SIP_ROUTER_OUTBOUND_SECRET")
    # Keep the transcripts of calls whose profile says `transcript: true`.
    transcripts: bool = Field(default=False, alias="SIP_ROUTER_TRANSCRIPTS")
    # Under `serve`, the calls sip-router stays with are driven by a process of their own,
    # so their traffic never delays a webhook's decision; false: in the service's process.
    calls_process: bool = Field(default=True, alias="SIP_ROUTER_CALLS_PROCESS")

    @field_validator("openai_api_key", "admin_token", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `SIP_ROUTER_ADMIN_TOKEN=` in an env file means "not configured", not "empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("openai_webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return split_webhook_secrets(value)

    @field_validator("outbound_secret", mode="before")
    @classmethod
    def _check_outbound_secret(cls, value: object) -> object:
        return parse_optional_secret(value)

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        url = urlsplit(value.rstrip("/"))
        # Without /v1 every call endpoint on OpenAI's host answers 404: each call looks gone.
        if url.hostname == OPENAI_API_HOST and url.path != API_VERSION_PATH:
            raise ValueError(
                f"add {API_VERSION_PATH}: on {OPENAI_API_HOST} the call endpoints are under"
                f" https://{OPENAI_API_HOST}{API_VERSION_PATH}"
            )
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """The configured secrets in clear, for the verifier only."""
        return tuple(s.get_secret_value() for s in self.openai_webhook_secret)

    @property
    def calls_in_own_process(self) -> bool:
        """Under `serve`: a calls process drives the calls stayed with (none in dry-run,
        which accepts no call)."""
        return self.calls_process and not self.dry_run

    @property
    def outbound_secret_value(self) -> str | None:
        """SIP_ROUTER_OUTBOUND_SECRET in clear, for the signer only."""
        return self.outbound_secret.get_secret_value() if self.outbound_secret else None

    @property
    def base_url_warning(self) -> str | None:
        """Why OPENAI_BASE_URL looks wrong (its path does not end in /v1), or None."""
        url = urlsplit(self.openai_base_url)
        if url.path.endswith(API_VERSION_PATH):
            return None
        return (
            f"OPENAI_BASE_URL path {url.path or '/'!r} on {url.hostname} does not end in"
            f" {API_VERSION_PATH}: call actions go to {url.path}/realtime/calls/..., which"
            f" OpenAI serves under {API_VERSION_PATH}; if every call ends up 'gone', add it"
        )


def split_webhook_secrets(value: object) -> object:
    """A comma-separated text (or a sequence) of secrets as checked SecretStr values."""
    if isinstance(value, str):
        return _parse_secret_list([part for part in value.split(",") if part.strip()])
    if isinstance(value, (list, tuple)):
        return _parse_secret_list(
            [v.get_secret_value() if isinstance(v, SecretStr) else str(v) for v in value]
        )
    return value


def parse_optional_secret(value: object) -> object:
    """One `whsec_...` secret, checked; empty text means not set."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return parse_webhook_secret(value) if value.strip() else None
    return value


def _parse_secret_list(parts: list[str]) -> tuple[SecretStr, ...]:
    """Each secret checked; with several, the problem says which one (never its value)."""
    secrets: list[SecretStr] = []
    for number, part in enumerate(parts, start=1):
        try:
            secrets.append(parse_webhook_secret(part))
        except ValueError as exc:
            if len(parts) == 1:
                raise
            raise ValueError(f"secret {number} of {len(parts)}: {exc}") from None
    return tuple(secrets)


class WebhookSecretSettings(BaseSettings):
    """Only OPENAI_WEBHOOK_SECRET, from the same sources as Settings (for send-test-call)."""

    model_config = Settings.model_config

    openai_webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), alias="OPENAI_WEBHOOK_SECRET"
    )

    @field_validator("openai_webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return split_webhook_secrets(value)


class OutboundSecretSettings(BaseSettings):
    """Only SIP_ROUTER_OUTBOUND_SECRET, from the same sources as Settings (for `check`)."""

    model_config = Settings.model_config

    outbound_secret: SecretStr | None = Field(default=None, alias="SIP_ROUTER_OUTBOUND_SECRET")

    @field_validator("outbound_secret", mode="before")
    @classmethod
    def _check(cls, value: object) -> object:
        return parse_optional_secret(value)


def load_settings(**overrides: object) -> Settings:
    """Build the settings or raise ConfigurationError with one line naming the variable."""
    return _load(Settings, overrides)


def load_webhook_secrets() -> tuple[str, ...]:
    """OPENAI_WEBHOOK_SECRET as serve reads it (environment, `.env`, /run/secrets), in clear."""
    loaded = _load(WebhookSecretSettings, {})
    return tuple(s.get_secret_value() for s in loaded.openai_webhook_secret)


def outbound_secret_configured() -> bool:
    """True when SIP_ROUTER_OUTBOUND_SECRET is set where serve reads it (and valid)."""
    return _load(OutboundSecretSettings, {}).outbound_secret is not None


def _load(cls: type[_S], overrides: dict[str, object]) -> _S:
    secrets_dir = SECRETS_DIR if SECRETS_DIR.is_dir() else None
    try:
        return cls(_secrets_dir=secrets_dir, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "configuration"
        name = _variable_name(field)
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{name}: {message}") from None


def _variable_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and info.alias:
        return info.alias
    return field
