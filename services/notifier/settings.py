"""Notifier service settings (env prefix NOTIFIER_, shared values from TASKBUS_)."""

from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    """Configuration of the notifier process."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_")

    service_name: str = "notifier"
    port: int = 8003
    mongo_db: str = "taskbus_notifier"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
