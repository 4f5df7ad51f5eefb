"""Auth service settings (env prefix AUTH_, shared values from TASKBUS_)."""

from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from common.sealing import DEV_RESET_SEAL_KEY, check_seal_key
from common.settings import ServiceSettings
from common.tokens import MAX_ACCESS_TTL_S

# OWASP Password Storage Cheat Sheet, argon2id second option: m=19 MiB, t=2, p=1. Never weaker.
ARGON2_MIN_MEMORY_KIB = 19456
ARGON2_MIN_TIME_COST = 2


class AuthSettings(ServiceSettings):
    """Configuration of the auth process."""

    model_config = SettingsConfigDict(env_prefix="AUTH_")

    service_name: str = "auth"
    port: int = 8001
    mongo_db: str = "taskbus_auth"
    # JSON list of {"kid", "private_key" (PEM), "retire_after"?}: the first signs, the others are
    # still published in the JWKS (until retire_after) so tokens they signed keep verifying.
    # Unset outside production: a development key is generated once and shared through Mongo.
    signing_keys: SecretStr | None = None
    # Capped by MAX_ACCESS_TTL_S: how long tasks and notifier remember a revocation.
    access_ttl_s: int = Field(default=900, ge=60, le=MAX_ACCESS_TTL_S)
    refresh_ttl_s: int = Field(default=30 * 24 * 3600, ge=3600)
    # Only the immediately previous refresh token is accepted again, and only this long.
    refresh_grace_s: int = Field(default=10, ge=0, le=60)
    reset_ttl_s: int = Field(default=1800, ge=300, le=24 * 3600)
    argon2_memory_kib: int = Field(default=ARGON2_MIN_MEMORY_KIB, ge=ARGON2_MIN_MEMORY_KIB)
    argon2_time_cost: int = Field(default=ARGON2_MIN_TIME_COST, ge=ARGON2_MIN_TIME_COST)
    argon2_parallelism: int = Field(default=1, ge=1, le=8)
    # Concurrent hashes; each holds argon2_memory_kib of RAM, so this bounds memory under a flood.
    argon2_concurrency: int = Field(default=4, ge=1, le=64)
    # Failed logins (services/auth/throttle.py): per address and account before that address
    # backs off, per account before it is guarded (only clean addresses heard), per address over
    # every account; each back-off doubles up to the cap (5 min at most: the README's promise).
    login_free_attempts: int = Field(default=5, ge=1)
    login_account_free_attempts: int = Field(default=10, ge=1)
    login_ip_free_attempts: int = Field(default=20, ge=1)
    login_backoff_cap_s: int = Field(default=300, ge=1, le=300)
    login_failure_window_s: int = Field(default=900, ge=60)
    # Peers whose X-Forwarded-For is believed (the gateways), as addresses or CIDRs.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # Password-reset requests per client address per hour, and reset mails per mailbox per hour
    # (services/auth/throttle.py); registrations are capped per address by the gateway.
    reset_requests_per_ip_hour: int = Field(default=20, ge=1)
    reset_mails_per_address_hour: int = Field(default=3, ge=1)
    max_body_bytes: int = Field(default=16 * 1024, ge=1024)
    relay_poll_s: float = Field(default=1.0, gt=0)
    # Seals the reset token in its event for the notifier (common/sealing.py); shared with the
    # notifier through TASKBUS_RESET_SEAL_KEY.
    reset_seal_key: SecretStr = SecretStr(DEV_RESET_SEAL_KEY)

    @model_validator(mode="after")
    def _production_needs_real_keys(self) -> Self:
        if self.is_production and self.signing_keys is None:
            raise ValueError("AUTH_SIGNING_KEYS must be set in production")
        check_seal_key(self.reset_seal_key.get_secret_value(), self.is_production)
        return self
