"""Notifier service settings (env prefix NOTIFIER_, shared values from TASKBUS_)."""

import ipaddress
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from common.sealing import DEV_RESET_SEAL_KEY, check_seal_key
from common.settings import ServiceSettings

DEV_RESET_URL = "http://127.0.0.1:8000/reset-password?token={token}"
DEV_MAIL_FROM = "Taskbus <noreply@taskbus.local>"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NotifierSettings(ServiceSettings):
    """Configuration of the notifier process."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_")

    service_name: str = "notifier"
    port: int = 8003
    mongo_db: str = "taskbus_notifier"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=120)
    mail_from: str = DEV_MAIL_FROM
    # `{token}` is replaced by the URL-encoded reset token.
    reset_url_template: str = DEV_RESET_URL
    # Opens the reset token sealed in its event by auth (common/sealing.py); shared with auth
    # through TASKBUS_RESET_SEAL_KEY.
    reset_seal_key: SecretStr = SecretStr(DEV_RESET_SEAL_KEY)

    # Retry ladder: attempt n+1 waits base * factor**n (+/- jitter) in tier topic n.
    retry_tiers: int = Field(default=4, ge=1, le=8)
    retry_base_delay_s: float = Field(default=5.0, gt=0)
    retry_factor: float = Field(default=4.0, ge=1)
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # A claim older than this is presumed dead (its process crashed) and may be taken over.
    claim_lease_s: float = Field(default=30.0, gt=0)
    # Per-user cap on sent mails per fixed window; welcome mails do not count against it.
    rate_limit_count: int = Field(default=20, ge=1)
    rate_limit_window_s: int = Field(default=3600, ge=1)
    # Consumers per source topic in this process (each owns some partitions, handled in order).
    consumers_per_topic: int = Field(default=2, ge=1, le=16)
    consumer_session_timeout_ms: int = Field(default=10_000, ge=6000)
    # How long finished deliveries are remembered; must exceed the source topics' retention.
    ledger_retention_s: int = Field(default=14 * 86400, ge=60)
    # Pause after an infrastructure error (Mongo, Kafka) before the same record is retried.
    infra_backoff_s: float = Field(default=1.0, ge=0)
    # notification.send.v1 from event producers (services/notifier/commands.py): the same
    # producers file as the tasks service's (common.commands.Policies).
    commands_enabled: bool = True
    producers_file: str = "var/kafka/producers.json"
    commands_metadata_max_age_ms: int = Field(default=30_000, ge=1000)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if "{token}" not in self.reset_url_template:
            raise ValueError("reset_url_template must contain {token}")
        if self.claim_lease_s <= self.smtp_timeout_s:
            raise ValueError("claim_lease_s must exceed smtp_timeout_s")
        if self.is_production:
            if self.reset_url_template == DEV_RESET_URL or not self.reset_url_template.startswith(
                "https://"
            ):
                raise ValueError("production needs an https NOTIFIER_RESET_URL_TEMPLATE")
            if self.mail_from == DEV_MAIL_FROM:
                raise ValueError("production needs NOTIFIER_MAIL_FROM")
            if self.smtp_security == "none" and not _is_loopback(self.smtp_host):
                raise ValueError("production refuses plain SMTP to a non-local relay")
            check_seal_key(self.reset_seal_key.get_secret_value(), production=True)
        return self
