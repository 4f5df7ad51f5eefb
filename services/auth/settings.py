"""Auth service settings (env prefix AUTH_, shared values from TASKBUS_)."""

from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    """Configuration of the auth process."""

    model_config = SettingsConfigDict(env_prefix="AUTH_")

    service_name: str = "auth"
    port: int = 8001
    mongo_db: str = "taskbus_auth"
