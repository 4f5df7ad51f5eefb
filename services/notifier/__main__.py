"""`python -m services.notifier` starts the notifier service."""

from common.runner import run_service
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings

if __name__ == "__main__":
    run_service(NotifierSettings(), create_app)
