"""`python -m gateway` starts the gateway.

On uvicorn like every service. Granian serialises helmet's headers faster (a bare echo with
them: ~11k vs 6-9k req/s here) but always adds `Server: granian`, which the gateway must not
send (granian issue #594), so it is not used.
"""

from common.runner import run_stack
from gateway.app import gateway_stack
from gateway.protocol import EdgeHttpProtocol
from gateway.settings import GatewaySettings

if __name__ == "__main__":
    # Its own protocol: uvicorn's answer to an unparseable request gets the edge's headers too.
    run_stack(GatewaySettings(), gateway_stack, http=EdgeHttpProtocol)
