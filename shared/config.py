"""Kiln's one settings object: every `KILN_*` environment variable, read once and validated."""

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def driver_url(url: str) -> str:
    """A plain SQLAlchemy URL with the driver Kiln uses for it (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class PublisherName(StrEnum):
    """Where app builds are published."""

    local = "local"  # a bare git repository and a site served by Kiln itself
    github = "github"  # a public GitHub repository with GitHub Pages


class LLMProviderName(StrEnum):
    """Which backend runs inference."""

    ollama = "ollama"  # an Ollama server at KILN_OLLAMA_URL
    openai = "openai"  # any OpenAI-compatible server at KILN_OPENAI_BASE_URL (vLLM, llama.cpp…)
    template = "template"  # deterministic text, no model: demos and CI


class Settings(BaseSettings):
    """Configuration from `KILN_*` variables and an optional `.env`; nothing else reads the env."""

    model_config = SettingsConfigDict(env_prefix="KILN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path(".kiln"), description="Where SQLite, embedded Redis and keys live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file kiln.db in the data dir."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset: 127.0.0.1:6379 if it answers, else an embedded Redis."
    )
    llm_provider: LLMProviderName = Field(
        LLMProviderName.ollama, description="ollama | openai | template"
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1", description="An OpenAI-compatible API, up to its `/v1`."
    )
    openai_api_key: SecretStr | None = Field(None, description="Its API key, if it needs one.")
    ollama_url: str = Field("http://127.0.0.1:11434", description="The Ollama server.")
    default_model: str = Field("llama3.2:1b", description="Model used when a job names none.")
    admin_api_key: SecretStr | None = Field(
        None, description="Bootstraps the admin API key; `kiln up` generates one when unset."
    )
    public_url: str | None = Field(
        None, description="Base URL clients reach Kiln at; default: the URL of each request."
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted.")
    job_max_attempts: int = Field(3, ge=1, description="Runs a job gets before it fails.")
    lease_seconds: float = Field(30.0, gt=0, description="How long a running job's lease lasts.")
    reconcile_interval_seconds: float = Field(
        2.0, gt=0, description="How often the reconciler looks for lost and stalled jobs."
    )
    requeue_after_seconds: float = Field(
        5.0, ge=0, description="Age after which a queued job with no message is re-enqueued."
    )
    llm_retries: int = Field(3, ge=0, description="Retries when the LLM backend is unreachable.")
    sync_timeout_s: float = Field(
        60.0, gt=0, description="How long /v1/generate and /v1/chat wait before answering 202."
    )
    flower_port: int = Field(5555, description="Port Flower listens on.")
    flower_basic_auth: SecretStr | None = Field(None, description="Flower's `user:password`.")
    log_level: str = Field("INFO", description="Log level of every Kiln process.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signing secret (`whsec_...`) for keys that have none of their own."
    )
    webhook_retry_schedule: str = Field(
        "0,5,300,1800,7200,18000,36000,36000",
        description="Delays in seconds before each delivery attempt (Svix's by default).",
    )
    webhook_connect_timeout_s: float = Field(5.0, gt=0, description="Webhook connect time-out.")
    webhook_timeout_s: float = Field(15.0, gt=0, description="Webhook total time-out.")
    callback_allow_private: bool = Field(
        False, description="Allow webhooks to loopback and private addresses (development only)."
    )

    task_secret: SecretStr | None = Field(
        None, description="The secret app briefs must carry; unset: every brief is refused."
    )
    attachment_max_bytes: int = Field(
        2 * 1024 * 1024, gt=0, description="Largest decoded attachment of an app brief."
    )
    attachments_max_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest total of an app brief's decoded attachments."
    )
    publisher: PublisherName = Field(PublisherName.local, description="local | github")
    github_api_url: str = Field("https://api.github.com", description="The GitHub REST API.")
    github_token: SecretStr | None = Field(None, description="Fine-grained GitHub token.")
    github_owner: str | None = Field(None, description="Org or user for repos; default: token's.")
    pages_timeout_s: float = Field(300.0, gt=0, description="How long to wait for a live site.")
    evaluation_deadline_s: float = Field(
        600.0, gt=0, description="Evaluation callbacks are retried until this long after intake."
    )
    license_holder: str | None = Field(None, description="Name in the MIT licence of app repos.")

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        delays = [part.strip() for part in value.split(",")]
        if not delays or any(not part or float(part) < 0 for part in delays):
            raise ValueError("a comma-separated list of delays in seconds, e.g. 0,5,300")
        return value

    @property
    def webhook_delays(self) -> list[float]:
        """The delay before each delivery attempt; its length is the number of attempts."""
        return [float(part) for part in self.webhook_retry_schedule.split(",")]

    @field_validator("database_url", "redis_url", "public_url", "github_owner", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def broker_url(self) -> str:
        """The Redis URL every process uses; `kiln up` sets KILN_REDIS_URL for its children."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, with its driver."""
        return driver_url(self.database_url or f"sqlite:///{(self.data_dir / 'kiln.db').resolve()}")


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read on first use."""
    return Settings()
