"""Gateway settings (env prefix GATEWAY_, shared values from TASKBUS_)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings

LimitScope = Literal["login", "public", "api", "meta"]
LimitKey = Literal["ip", "user", "account"]


class LimitPolicy(BaseModel):
    """One rate-limit policy: at most `limit` requests per rolling `window_s` per key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    limit: int = Field(gt=0)
    window_s: int = Field(gt=0)
    # login: POST to the login route; public: other routes needing no token; api: the rest
    # (which route is which: gateway/routes.py); meta: the paths outside the API (/readyz,
    # /openapi.json, /docs, /asyncapi.json; not /livez).
    scope: LimitScope
    # ip: the client address; user: the token's subject; account: the login body's email.
    key: LimitKey


DEFAULT_POLICIES = (
    # No per-account login policy here: the edge cannot tell a wrong password from a right one,
    # so one would let anybody lock a victim out. Auth backs off per account and address
    # (services/auth/throttle.py); a window of 5 min keeps every login delay within 5 min.
    LimitPolicy(name="login-ip", limit=10, window_s=300, scope="login", key="ip"),
    LimitPolicy(name="public-ip", limit=120, window_s=60, scope="public", key="ip"),
    LimitPolicy(name="api-user", limit=600, window_s=60, scope="api", key="user"),
    LimitPolicy(name="api-ip", limit=1200, window_s=60, scope="api", key="ip"),
    # Probes and docs: /readyz pings Redis and Kafka, the spec merges three upstream documents.
    LimitPolicy(name="meta-ip", limit=120, window_s=60, scope="meta", key="ip"),
)


class GatewaySettings(ServiceSettings):
    """Configuration of the gateway process."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    service_name: str = "gateway"
    port: int = 8000
    # /metrics is served here only, never on the public port; bind it where only the scraper
    # reaches (None: the public listener's host).
    metrics_port: int = 9102
    metrics_host: str | None = None
    auth_url: str = "http://127.0.0.1:8001"
    tasks_url: str = "http://127.0.0.1:8002"
    notifier_url: str = "http://127.0.0.1:8003"
    # Whole-exchange deadline per upstream (seconds); connecting gets a shorter one.
    auth_timeout_s: float = 10.0
    tasks_timeout_s: float = 5.0
    notifier_timeout_s: float = 5.0
    connect_timeout_s: float = 1.0
    upstream_pool_size: int = 256
    max_body_bytes: int = 1_048_576
    # Whole request header section (431 past it); a bearer token has its own bound in
    # common.tokens.
    max_header_bytes: int = 16_384
    token_cache_size: int = 10_000
    # Longest access-token lifetime auth issues: how long a revocation must be remembered.
    max_token_lifetime_s: int = 3600
    rate_limits: tuple[LimitPolicy, ...] = DEFAULT_POLICIES
    # When Redis cannot be reached: "open" admits (limits and revocation unchecked, cache
    # bypassed), "closed" answers 503. Open keeps the API up; closed keeps the guarantees.
    redis_failure_mode: Literal["open", "closed"] = "open"
    # Peers whose X-Forwarded-For is believed (the load balancers), as addresses or CIDRs.
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    cors_max_age_s: int = 600
    # The refresh cookie (SameSite=Strict) rides along only on credentialed requests.
    cors_allow_credentials: bool = True
    # Response cache (which routes: gateway/routes.py): how long at most, how big, what varies.
    cache_ttl_s: int = 30
    cache_max_body_bytes: int = 262_144
    cache_l1_entries: int = 5_000
    cache_l1_bytes: int = 64 * 1024 * 1024
    cache_vary: tuple[str, ...] = ("accept", "accept-language")
    docs_cache_s: float = 30.0

    def upstream_options(self) -> dict[str, tuple[str, float]]:
        """Name -> (base URL, deadline) of every upstream."""
        return {
            "auth": (self.auth_url, self.auth_timeout_s),
            "tasks": (self.tasks_url, self.tasks_timeout_s),
            "notifier": (self.notifier_url, self.notifier_timeout_s),
        }
