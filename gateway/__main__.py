"""`python -m gateway` starts the gateway."""

from common.runner import run_service
from gateway.app import create_app
from gateway.settings import GatewaySettings

if __name__ == "__main__":
    run_service(GatewaySettings(), create_app)
