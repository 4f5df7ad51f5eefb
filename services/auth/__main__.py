"""`python -m services.auth` starts the auth service."""

from common.runner import run_service
from services.auth.app import create_app
from services.auth.settings import AuthSettings

if __name__ == "__main__":
    run_service(AuthSettings(), create_app)
