"""Tasks service settings (env prefix TASKS_, shared values from TASKBUS_)."""

from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class TasksSettings(ServiceSettings):
    """Configuration of the tasks process."""

    model_config = SettingsConfigDict(env_prefix="TASKS_")

    service_name: str = "tasks"
    port: int = 8002
    mongo_db: str = "taskbus_tasks"
