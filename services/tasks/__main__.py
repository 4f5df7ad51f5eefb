"""`python -m services.tasks` starts the tasks service."""

from common.runner import run_service
from services.tasks.app import create_app
from services.tasks.settings import TasksSettings

if __name__ == "__main__":
    run_service(TasksSettings(), create_app)
