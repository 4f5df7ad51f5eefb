"""Who may do what on Kafka: the ACL table of every Taskbus principal.

Each service connects as `svc-<name>` and each event producer as `producer-<name>`; the broker runs
with `allow.everyone.if.no.acl.found=false`, so a principal can do only what this table grants.
The local stack applies it at `make up` (deploy/local/kafka_security.py), tests that start services
under a topic prefix apply it for that prefix (tests/support/kafka_auth.py), a cluster's operator
applies the same rules (docs/architecture.md, "Kafka security").

A producer writes only to its own command topic, so the topic a record is on proves who wrote it:
the tasks service reads the producer's name from the topic, never from the record.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from common.events import (
    ANSWERS_PREFIX,
    COMMANDS_PREFIX,
    NOTIFIER_DLQ_TOPIC,
    NOTIFIER_RETRY_TOPIC,
    TASKS_TOPIC,
    USERS_TOPIC,
    answers_topic,
    commands_topic,
)
from common.kafka_admin import Acl, PatternType, ResourceType

SERVICES = ("auth", "tasks", "notifier", "gateway")
# A producer name is one topic-name segment (no dot), as common.commands.ProducerName, and not
# "dlq" (a dead-letter topic may share the command prefix).
_PRODUCER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,48}$")

READ_TOPIC = ("READ", "DESCRIBE")
WRITE_TOPIC = ("WRITE", "DESCRIBE")
# Services create the topics they use at start (common.kafka.ensure_topics): whichever starts
# first makes them, so each may create each topic it reads or writes.
CREATE = ("CREATE",)


@dataclass(frozen=True)
class Grant:
    """Operations on one resource; `name` is logical: the topic prefix goes in front of it."""

    resource: ResourceType
    name: str
    pattern: PatternType
    operations: tuple[str, ...]


def _topic(name: str, *operations: str, prefixed: bool = False) -> Grant:
    return Grant("topic", name, "prefixed" if prefixed else "literal", operations)


def _groups(prefix: str) -> Grant:
    # Consumer groups are named `<topic prefix><service>.<purpose>` (notifier, gateway).
    return Grant("group", prefix, "prefixed", ("READ",))


# Found from the code: the topics each service creates (ensure_topics), publishes to (its outbox
# relay or retry ladder), consumes (subscribers, the revocation feed) and its consumer groups.
# No service uses transactions, so no transactional id is granted; idempotent producers need no
# cluster ACL since Kafka 2.8 (WRITE on a topic implies IDEMPOTENT_WRITE).
SERVICE_GRANTS: dict[str, tuple[Grant, ...]] = {
    "auth": (_topic(USERS_TOPIC, *WRITE_TOPIC, *CREATE),),
    "tasks": (
        _topic(TASKS_TOPIC, *WRITE_TOPIC, *CREATE),
        _topic(USERS_TOPIC, *READ_TOPIC, *CREATE),  # the revocation feed
        # Commands in from every producer, answers out to each (issue 13). It creates the command
        # topics of the producers its policies file names (creating one grants no write on it).
        _topic(COMMANDS_PREFIX, *READ_TOPIC, *CREATE, prefixed=True),
        _topic(ANSWERS_PREFIX, *WRITE_TOPIC, *CREATE, prefixed=True),
        _groups("tasks."),
    ),
    "notifier": (
        _topic(USERS_TOPIC, *READ_TOPIC, *CREATE),
        _topic(TASKS_TOPIC, *READ_TOPIC, *CREATE),
        # Its retry tiers `taskbus.notifier.retry.<n>` and its dead-letter topic, read and written.
        _topic(f"{NOTIFIER_RETRY_TOPIC}.", "READ", *WRITE_TOPIC, *CREATE, prefixed=True),
        _topic(NOTIFIER_DLQ_TOPIC, "READ", *WRITE_TOPIC, *CREATE),
        # notification.send.v1 from every producer, answered to each (services/notifier/commands).
        _topic(COMMANDS_PREFIX, *READ_TOPIC, prefixed=True),
        _topic(ANSWERS_PREFIX, *WRITE_TOPIC, *CREATE, prefixed=True),
        _groups("notifier."),
    ),
    "gateway": (
        _topic(TASKS_TOPIC, *READ_TOPIC, *CREATE),
        _topic(USERS_TOPIC, *READ_TOPIC, *CREATE),
        _groups("gateway."),
        # It only consumes, but its FastStream broker starts an idempotent producer all the
        # same, which needs a producer id: granted by WRITE on any topic, else by this.
        Grant("cluster", "kafka-cluster", "literal", ("IDEMPOTENT_WRITE",)),
    ),
}


def service_principal(service: str) -> str:
    """The SCRAM user name of a Taskbus service."""
    return f"svc-{service}"


def producer_principal(producer: str) -> str:
    """The SCRAM user name of an event producer."""
    return f"producer-{producer}"


def check_producer_name(name: str) -> str:
    """The name if it can be a producer's; ValueError otherwise."""
    if not _PRODUCER_NAME.match(name) or name == "dlq":
        raise ValueError(
            f"producer name {name!r}: lower-case letters, digits, '-' and '_', starting with a"
            " letter or digit, at most 49, not 'dlq'"
        )
    return name


def producer_grants(producer: str) -> tuple[Grant, ...]:
    """A producer writes its own command topic, reads its own answers, and nothing else."""
    check_producer_name(producer)
    return (
        _topic(commands_topic(producer), *WRITE_TOPIC),
        _topic(answers_topic(producer), *READ_TOPIC),
        # Its consumer groups for the answers, named `producer-<name>...`. A prefix: so producer
        # `crm` could join `crm-eu`'s groups; overlapping names are refused (name_overlaps).
        Grant("group", producer_principal(producer), "prefixed", ("READ",)),
    )


def name_overlaps(producer: str, others: Iterable[str]) -> str | None:
    """Another producer whose consumer-group prefix covers this one's, or the other way round."""
    return next(
        (o for o in others if o != producer and (o.startswith(producer) or producer.startswith(o))),
        None,
    )


def _acls(principal: str, grants: tuple[Grant, ...], topic_prefix: str) -> list[Acl]:
    def name(grant: Grant) -> str:
        # The cluster has one name; topics and groups carry the prefix.
        return grant.name if grant.resource == "cluster" else f"{topic_prefix}{grant.name}"

    return [
        Acl(f"User:{principal}", g.resource, name(g), g.pattern, operation)
        for g in grants
        for operation in g.operations
    ]


def service_acls(service: str, topic_prefix: str = "") -> list[Acl]:
    """The ACLs of one service's principal, for topics and groups under `topic_prefix`."""
    return _acls(service_principal(service), SERVICE_GRANTS[service], topic_prefix)


def producer_acls(producer: str, topic_prefix: str = "") -> list[Acl]:
    """The ACLs of one producer's principal, for topics and groups under `topic_prefix`."""
    return _acls(producer_principal(producer), producer_grants(producer), topic_prefix)


def all_service_acls(topic_prefix: str = "") -> list[Acl]:
    """Every service's ACLs under `topic_prefix`."""
    return [acl for service in SERVICES for acl in service_acls(service, topic_prefix)]
