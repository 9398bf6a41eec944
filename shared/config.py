"""Kiln's one settings object: every `KILN_*` environment variable, read once and validated."""

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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


class Environment(StrEnum):
    """How strict start-up is about secrets."""

    development = "development"  # defaults and generated keys are fine
    production = "production"  # missing or placeholder secrets stop every process at start-up


PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "change_me", "secret", "password"})
"""Values that stand in for a secret someone forgot to set (compared lower-cased, trimmed)."""


def is_placeholder(secret: SecretStr | None) -> bool:
    """Whether a secret is missing, empty or a stand-in such as `changeme`."""
    return secret is None or secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS


def _password(auth: SecretStr | None) -> SecretStr | None:
    # Only the password half of Flower's `user:password` is secret.
    return None if auth is None else SecretStr(auth.get_secret_value().rpartition(":")[2])


def parse_ollama_urls(value: str) -> dict[int, str]:
    """`0=http://ollama-0:11434,1=http://ollama-1:11434` as {GPU index: Ollama URL}."""
    urls = {}
    for part in filter(None, (part.strip() for part in value.split(","))):
        index, sep, url = part.partition("=")
        if not sep or not index.strip().isdigit() or not url.strip():
            raise ValueError("comma-separated GPU=URL pairs, e.g. 0=http://ollama-0:11434")
        urls[int(index)] = url.strip()
    return urls


class Settings(BaseSettings):
    """Configuration from `KILN_*` variables and an optional `.env`; nothing else reads the env."""

    model_config = SettingsConfigDict(env_prefix="KILN_", env_file=".env", extra="ignore")

    env: Environment = Field(
        Environment.development, description="development | production (strict secrets)."
    )
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
    ollama_urls: str = Field(
        "", description="Ollama per GPU for `kiln worker --gpus`: `0=http://a:11434,1=http://b…`."
    )
    gpu_index: int | None = Field(
        None, ge=0, description="The GPU a worker is pinned to; `kiln worker --gpus` sets it."
    )
    default_model: str = Field("llama3.2:1b", description="Model used when a job names none.")
    admin_api_key: SecretStr | None = Field(
        None, description="Bootstraps the admin API key; `kiln up` generates one when unset."
    )
    public_url: str | None = Field(
        None, description="Base URL clients reach Kiln at; default: the URL of each request."
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted.")
    max_prompt_chars: int = Field(
        100_000, gt=0, description="Longest prompt (or sum of message contents) a call may send."
    )
    rate_limit_rpm: int = Field(
        0, ge=0, description="Generation requests per key per minute; 0: unlimited."
    )
    rate_limit_tpm: int = Field(
        0, ge=0, description="Generated and prompt tokens per key per minute; 0: unlimited."
    )
    auth_failures_per_minute: int = Field(
        20, ge=0, description="Invalid API keys one client address may send a minute; 0: any."
    )
    job_max_attempts: int = Field(3, ge=1, description="Runs a job gets before it fails.")
    lease_seconds: float = Field(30.0, gt=0, description="How long a running job's lease lasts.")
    reconcile_interval_seconds: float = Field(
        2.0, gt=0, description="How often the reconciler looks for lost and stalled jobs."
    )
    requeue_after_seconds: float = Field(
        5.0, ge=0, description="Age after which a queued job with no message is re-enqueued."
    )
    llm_retries: int = Field(3, ge=0, description="Retries when the LLM backend is unreachable.")
    llm_fallback: str = Field(
        "", description="Providers tried in order when the LLM backend stays unreachable."
    )
    cache_ttl_s: int = Field(
        3600, ge=0, description="Seconds a repeatable completion stays cached; 0 disables."
    )
    sync_timeout_s: float = Field(
        60.0, gt=0, description="How long /v1/generate and /v1/chat wait before answering 202."
    )
    allowed_origins: str = Field(
        "", description="Comma-separated origins allowed cross-origin (CORS); empty: none."
    )
    flower_port: int = Field(5555, description="Port Flower listens on.")
    flower_basic_auth: SecretStr | None = Field(None, description="Flower's `user:password`.")
    log_level: str = Field("INFO", description="Log level of every Kiln process.")
    task_events: bool = Field(
        False, description="Workers send task events from the start; else once Flower asks."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Workers and the reconciler serve /metrics here; 0: off."
    )
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
    api_url: str = Field("http://127.0.0.1:8000", description="The API the operator CLI calls.")
    api_key: SecretStr | None = Field(None, description="The API key that CLI sends.")

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        delays = [part.strip() for part in value.split(",")]
        if not delays or any(not part or float(part) < 0 for part in delays):
            raise ValueError("a comma-separated list of delays in seconds, e.g. 0,5,300")
        return value

    @field_validator("ollama_urls")
    @classmethod
    def _valid_ollama_urls(cls, value: str) -> str:
        parse_ollama_urls(value)
        return value

    @model_validator(mode="after")
    def _production_secrets(self) -> "Settings":
        if self.env == Environment.production and (problems := self.production_problems()):
            raise ValueError("; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """What keeps these settings from running in production: each names its variable."""
        required = {"KILN_ADMIN_API_KEY": self.admin_api_key}
        if self.publisher == PublisherName.github:
            required["KILN_GITHUB_TOKEN"] = self.github_token
        if_set = {
            "KILN_WEBHOOK_SECRET": self.webhook_secret,
            "KILN_TASK_SECRET": self.task_secret,
            "KILN_OPENAI_API_KEY": self.openai_api_key,
            "KILN_FLOWER_BASIC_AUTH": _password(self.flower_basic_auth),
        }
        problems = [
            f"{name} is missing or a placeholder"
            for name, secret in required.items()
            if is_placeholder(secret)
        ]
        problems += [
            f"{name} is a placeholder"
            for name, secret in if_set.items()
            if secret is not None and is_placeholder(secret)
        ]
        return problems

    def flower_problem(self) -> str | None:
        """Why Flower must not start: in production it needs real `user:password` auth."""
        if self.env == Environment.production and is_placeholder(_password(self.flower_basic_auth)):
            return "KILN_FLOWER_BASIC_AUTH is missing or a placeholder (Flower needs auth)"
        return None

    @property
    def gpu_ollama_urls(self) -> dict[int, str]:
        """KILN_OLLAMA_URLS as {GPU index: URL}; a GPU not in it uses KILN_OLLAMA_URL."""
        return parse_ollama_urls(self.ollama_urls)

    @property
    def webhook_delays(self) -> list[float]:
        """The delay before each delivery attempt; its length is the number of attempts."""
        return [float(part) for part in self.webhook_retry_schedule.split(",")]

    @field_validator("llm_fallback")
    @classmethod
    def _valid_fallback(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [name for name in names if name not in LLMProviderName.__members__]
        if unknown:
            raise ValueError(f"unknown providers {unknown}: use ollama, openai or template")
        return value

    @property
    def fallback_providers(self) -> list[LLMProviderName]:
        """The providers KILN_LLM_FALLBACK names, in order."""
        names = [part.strip() for part in self.llm_fallback.split(",")]
        return [LLMProviderName(name) for name in names if name]

    @field_validator("database_url", "redis_url", "public_url", "github_owner", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def cors_origins(self) -> list[str]:
        """The origins in KILN_ALLOWED_ORIGINS."""
        return [origin.strip() for origin in self.allowed_origins.split(",") if origin.strip()]

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
    """The process's settings, read on first use; invalid ones stop the process with a message
    naming each variable to fix, and no traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"Kiln cannot start: {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """Settings errors as `KILN_NAME: what is wrong`, one per line."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        name = "_".join(str(part) for part in error["loc"]).upper()
        lines.append(f"KILN_{name}: {message}" if name else message)
    return "\n".join(lines)
