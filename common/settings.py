"""Settings every Taskbus process shares; each service subclasses with its own env prefix."""

from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Environment = Literal["dev", "test", "production"]
KafkaProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
# PLAIN only for a cluster's bootstrap super user (compose: its password is in the broker's
# JAAS config, so it can create the SCRAM users); every service uses SCRAM.
KafkaMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
# Passwords the local stack generates (deploy/local/kafka_security.py) start with this marker, so
# a production process can tell and refuse them wherever they were copied.
DEV_KAFKA_PASSWORD_MARKER = "taskbus-dev-"  # noqa: S105 - a marker, not a password


class ServiceSettings(BaseSettings):
    """Infrastructure endpoints and process options.

    A value is read from `<SERVICE>_<NAME>` first, then from the shared `TASKBUS_<NAME>`, so one
    variable can point every service at the same Kafka while a single service can still differ.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    service_name: str = "taskbus"
    environment: Environment = "dev"
    host: str = "127.0.0.1"
    port: int = 8000
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Prepended to every topic name so that test runs can share one broker without crosstalk.
    topic_prefix: str = ""
    kafka_partitions: int = 6
    # Replicas of each topic a service creates: 3 on a production cluster (with the brokers'
    # min.insync.replicas=2 and the producers' acks=all an acknowledged event survives a node).
    kafka_replication_factor: int = Field(default=1, ge=1)
    # Who this process is to the broker (its own principal, with only the ACLs it needs; see
    # common/kafka_acls.py). SASL_SSL in production; the local stack uses SASL_PLAINTEXT.
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaMechanism = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    # CA bundle that signed the brokers' certificates (SASL_SSL); the system's store if unset.
    kafka_ssl_cafile: str | None = None
    mongo_url: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    # A database that is down must fail a request well inside the gateway's upstream deadline
    # (5 s for tasks), so clients get a prompt 503 rather than a 504 or 500 by chance.
    mongo_server_selection_timeout_ms: int = Field(default=2000, gt=0)
    mongo_connect_timeout_ms: int = Field(default=1000, gt=0)
    # 2 s, not 3: a request can meet two timeouts in a row on a stopped database (a read, then a
    # fresh connection's), which at 3 s each answered after 6.0 s in one CI run of two.
    mongo_socket_timeout_ms: int = Field(default=2000, gt=0)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "taskbus:"
    # Access tokens: who issues them, for whom, and where the verification keys are published.
    jwt_issuer: str = "https://auth.taskbus.local"
    jwt_audience: str = "taskbus"
    jwks_url: str = "http://127.0.0.1:8001/.well-known/jwks.json"
    # A fixed JWKS document used instead of jwks_url (tests; clusters that mount the key set).
    jwks_json: str | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Where spans go when no OTLP endpoint is configured (JSON lines, one file per process).
    trace_dir: str = "var/traces"
    trace_sample_ratio: float = 1.0
    sentry_dsn: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Service prefix wins over the shared TASKBUS_ prefix."""
        shared = EnvSettingsSource(settings_cls, env_prefix="TASKBUS_")
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    @field_validator("jwks_json")
    @classmethod
    def _jwks_is_json(cls, value: str | None) -> str | None:
        if value is not None and not isinstance(orjson.loads(value).get("keys"), list):
            raise ValueError("jwks_json must be a JWKS document with a 'keys' list")
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Refuse Kafka settings production must not run with (after each service's own checks)."""
        sasl = self.kafka_security_protocol != "PLAINTEXT"
        if sasl and (self.kafka_username is None or self.kafka_password is None):
            raise ValueError(
                "TASKBUS_KAFKA_USERNAME and TASKBUS_KAFKA_PASSWORD are required with SASL"
            )
        if not self.is_production:
            return
        if self.kafka_security_protocol != "SASL_SSL":
            raise ValueError(
                "production talks to Kafka over SASL_SSL only (TASKBUS_KAFKA_SECURITY_PROTOCOL)"
            )
        password = self.kafka_password.get_secret_value() if self.kafka_password else ""
        if password.startswith(DEV_KAFKA_PASSWORD_MARKER) or len(password) < 16:
            raise ValueError("refusing a generated development (or short) TASKBUS_KAFKA_PASSWORD")

    def static_jwks(self) -> dict[str, Any] | None:
        """The configured fixed JWKS, if any."""
        return orjson.loads(self.jwks_json) if self.jwks_json else None

    def topic(self, name: str) -> str:
        """The physical Kafka topic for a logical topic name."""
        return f"{self.topic_prefix}{name}"

    @property
    def is_production(self) -> bool:
        """True when dev defaults must be refused."""
        return self.environment == "production"
