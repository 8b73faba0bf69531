"""One settings object, read from ``JOBQUEUE_*`` environment variables and validated at
start-up. Services receive it in their constructors; nothing else reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.ratelimit import Rate

CommaList = Annotated[list[str], NoDecode]
SecondsList = Annotated[list[float], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class TypeLimitSetting(BaseModel):
    """One job type's limits in ``JOBQUEUE_TYPE_LIMITS``; a field given (even null)
    replaces the decorator's, one left out keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    concurrency: int | None = Field(None, gt=0, strict=True)
    rate: str | None = None

    @field_validator("rate")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            Rate.parse(value)
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBQUEUE_", extra="ignore")

    # Backing stores. `jobqueue dev` fills these in with embedded servers when unset.
    redis_url: str | None = None
    mongodb_url: str | None = None
    mongodb_database: str = "jobqueue"
    mongodb_timeout_seconds: float = Field(3.0, gt=0)
    redis_prefix: str = "jq"
    queue_name: str = "default"

    handler_modules: CommaList = ["services.worker.handlers"]
    log_dir: Path = Path("logs")
    log_level: str = "INFO"

    # API
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    submit_batch_window_ms: float = Field(2.0, ge=0)
    submit_batch_max: int = Field(500, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    sse_max_clients: int = Field(1000, gt=0)
    sse_max_clients_per_tenant: int = Field(100, gt=0)
    """Of those, the streams one tenant's callers may hold at once (429 above)."""
    sse_keepalive_seconds: float = Field(15.0, gt=0)

    # Access control (services/api/auth.py, shared/apikeys.py)
    auth: Literal["enabled", "disabled"] = "enabled"
    """``disabled``: no API keys checked, every caller may do everything (default tenant)."""
    api_key_cache_seconds: float = Field(5.0, ge=0)
    """How long an API process trusts what it read about a key (a revoke takes effect
    within this time) and that no key exists yet (protected mode ends within it)."""
    submit_rate_limit: str | None = None
    """Jobs each API key may submit, e.g. ``100/s`` (unset: unlimited); a key may
    override it (``jobqueue keys create --submit-rate``)."""

    # Jobs and workers
    concurrency: int = Field(10, gt=0)
    default_timeout_seconds: float = Field(300.0, gt=0)
    default_max_retries: int = Field(3, ge=0)
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    visibility_timeout_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(25.0, ge=0)
    max_deliveries: int = Field(5, gt=0)
    max_result_bytes: int = Field(1024 * 1024, gt=0, le=16 * 1024 * 1024)
    process_pool_size: int = Field(2, gt=0, le=256)
    type_limits: dict[str, TypeLimitSetting] = {}
    """Per job type, JSON: ``{"sendEmail": {"concurrency": 5, "rate": "10/s"}}``."""

    # Bounded storage: finished jobs expire; histories, tracebacks and webhooks are capped.
    retention_seconds: float = Field(7 * 86400.0, ge=1, le=365 * 86400)
    retention_sweep_interval_seconds: float = Field(10.0, gt=0)
    retention_sweep_page_size: int = Field(500, gt=0)
    history_limit: int = Field(100, ge=64, le=10_000)
    consumer_idle_seconds: float | None = Field(None, gt=0)
    """Unset: 10 x visibility_timeout_seconds."""

    # Scheduler
    promote_interval_seconds: float = Field(0.1, gt=0)
    reclaim_interval_seconds: float = Field(2.0, gt=0)
    reconcile_interval_seconds: float = Field(10.0, gt=0)
    reconcile_grace_seconds: float = Field(5.0, ge=0)
    leader_ttl_seconds: float = Field(5.0, gt=0)
    reclaim_page_size: int = Field(100, gt=0)
    reconcile_page_size: int = Field(1000, gt=0)

    # Webhooks
    webhook_secret: str | None = None
    webhook_timeout_seconds: float = Field(15.0, gt=0)
    webhook_retry_schedule: SecondsList = [5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_allowed_hosts: CommaList = []
    webhook_sweep_interval_seconds: float = Field(5.0, gt=0)
    webhook_concurrency: int = Field(50, gt=0)
    webhook_lease_seconds: float = Field(60.0, gt=0)
    webhook_max_result_bytes: int = Field(16 * 1024, ge=0)
    webhook_secrets_refresh_seconds: float = Field(30.0, gt=0)
    """How long the notifier uses a tenant's secrets before reading them again (a
    rotation announced in Redis by ``jobqueue tenants rotate-secret`` is read at once)."""

    # Built-in job types
    http_timeout_seconds: float = Field(30.0, gt=0)
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, gt=0, lt=65536)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_from: str = "jobqueue@localhost"
    sms_provider_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    push_provider_url: str = "https://fcm.googleapis.com"
    fcm_project_id: str | None = None
    fcm_access_token: str | None = None
    fcm_service_account_file: Path | None = None
    scrape_allowed_hosts: CommaList = []
    scrape_respect_robots: bool = True
    scrape_timeout_seconds: float = Field(15.0, gt=0)
    scrape_max_bytes: int = Field(5 * 1024 * 1024, gt=0)
    scrape_max_redirects: int = Field(5, ge=0)
    scrape_user_agent: str = "jobqueue-scraper/0.1"
    image_max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    image_max_pixels: int = Field(40_000_000, gt=0)

    _split = field_validator(
        "handler_modules", "webhook_retry_schedule", "webhook_allowed_hosts",
        "scrape_allowed_hosts", mode="before"
    )(_split_commas)

    @field_validator("submit_rate_limit", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            Rate.parse(value)  # ValueError names the expected form
        return value

    @field_validator("history_limit")
    @classmethod
    def _history_holds_deaths(cls, limit: int, info: Any) -> int:
        # NOTE: poison pills are counted from the history's last entries (scheduler).
        if limit < 3 * info.data.get("max_deliveries", 0):
            raise ValueError("history_limit must be at least 3 x max_deliveries")
        return limit

    @property
    def consumer_idle_after_seconds(self) -> float:
        """How long a worker's consumer may sit empty and idle before it is deleted."""
        return self.consumer_idle_seconds or 10 * self.visibility_timeout_seconds

    def require_stores(self) -> tuple[str, str]:
        """The Redis and MongoDB URLs, or a clear start-up error when either is unset."""
        missing = [
            name
            for name, value in (("JOBQUEUE_REDIS_URL", self.redis_url),
                                ("JOBQUEUE_MONGODB_URL", self.mongodb_url))
            if not value
        ]
        if missing:
            raise SystemExit(
                f"{' and '.join(missing)} not set: point them at your servers, "
                "or run `jobqueue dev` to start embedded ones."
            )
        assert self.redis_url and self.mongodb_url
        return self.redis_url, self.mongodb_url
