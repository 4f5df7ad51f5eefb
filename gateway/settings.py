"""Gateway settings (env prefix GATEWAY_, shared values from TASKBUS_)."""

from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Configuration of the gateway process."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    service_name: str = "gateway"
    port: int = 8000
    auth_url: str = "http://127.0.0.1:8001"
    tasks_url: str = "http://127.0.0.1:8002"
