"""`python -m common.kafka_setup`: apply the ACL table and the services' SCRAM users to a cluster.

Run once per deployment (compose's `kafka-setup`, a Kubernetes Job) as the cluster's super user:
its connection comes from the usual TASKBUS_KAFKA_* settings, each service's password from
`<SERVICE>_KAFKA_PASSWORD` (a service whose password is not set keeps the SCRAM user it has), the
topic prefix from TASKBUS_TOPIC_PREFIX. Idempotent: rules that exist are left as they are.
"""

import asyncio
import os
import sys

from aiokafka.admin import AIOKafkaAdminClient

from common.kafka import kafka_options
from common.kafka_acls import SERVICES, all_service_acls, service_principal
from common.kafka_admin import create_acls, upsert_scram_users
from common.settings import ServiceSettings


async def setup(settings: ServiceSettings, passwords: dict[str, str]) -> None:
    """SCRAM-SHA-512 users for `passwords` (principal -> password), then every service's ACLs."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="taskbus-kafka-setup",
        **kafka_options(settings),
    )
    await admin.start()
    try:
        await upsert_scram_users(admin, passwords, "SCRAM-SHA-512")
        await create_acls(admin, all_service_acls(settings.topic_prefix))
    finally:
        await admin.close()


def main() -> int:
    """Command-line entry point."""
    settings = ServiceSettings(service_name="kafka-setup")
    passwords = {
        service_principal(s): os.environ[f"{s.upper()}_KAFKA_PASSWORD"]
        for s in SERVICES
        if os.environ.get(f"{s.upper()}_KAFKA_PASSWORD")
    }
    asyncio.run(setup(settings, passwords))
    print(f"kafka-setup: {len(passwords)} SCRAM users, the ACLs of {', '.join(SERVICES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
