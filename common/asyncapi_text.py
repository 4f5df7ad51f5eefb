"""The tables of the AsyncAPI document: prose, headers, operations (built by common/asyncapi.py)."""

from dataclasses import dataclass
from typing import Any

# Topics keep the broker's retention (log.retention.hours=168 in the local broker; the services
# create their topics without overriding it).
RETENTION_MS = 7 * 24 * 3600 * 1000

DESCRIPTION = """\
Every Kafka topic Taskbus reads or writes, generated from the pydantic models that validate the
records (`common/asyncapi.py`); the JSON Schema of each type is also committed under
`docs/events/<type>.json`.

**Envelope.** Every value is a CloudEvents 1.0 structured JSON envelope (`specversion`, `id`,
`source`, `type`, `time`, `subject`, `datacontenttype`, `data`, and the extensions `traceparent`
and `causationid`). `type` is versioned (`task.created.v1`): a change that is not backward
compatible is a new type, published side by side with the old one, never a change of an
existing type (a test compares the models with `docs/events/`). The payload models forbid
unknown fields, so even an added optional field makes a new version.

**Key and ordering.** The record key is the id of the user the event concerns (the envelope's
`subject`). One user's records land on one partition and are read in the order written; there is
no order across users.

**Delivery.** At least once: producers use `acks=all` with idempotence, outbox relays may
publish an event again after a crash, consumers commit only after handling. Deduplicate by the
envelope `id`: the notifier's delivery ledger sends one mail per id, the gateway's effects are
safe to repeat, and tasks handles a command once per (producer, `id`), so a re-sent or
redelivered record has one effect.

**Retention.** Topics keep records for 7 days (`retention.ms`, `cleanup.policy=delete`); a
consumer group that is away longer misses records.

**Topic names.** A deployment may prefix every topic (`TASKBUS_TOPIC_PREFIX`); the addresses
below carry this deployment's prefix.
"""

SECURITY: dict[str, Any] = {
    "type": "scramSha512",
    "description": (
        "SASL SCRAM-SHA-512 (SASL_SSL in production). Every Taskbus service is its own "
        "principal, allowed by the broker's StandardAuthorizer ACLs only the topics and groups "
        "it uses. An event producer is a principal too (`make producer NAME=crm` prints its "
        "credentials): a prefixed ACL lets it write only taskbus.commands.<name> and read only "
        "taskbus.answers.<name>, so the topic a command arrives on proves who sent it."
    ),
}

# What common.kafka.publish puts on every record: its own two, FastStream's content-type and
# correlation_id, and the W3C trace context from FastStream's telemetry middleware.
RECORD_HEADERS = {
    "ce_type": "The CloudEvents type, to route or skip a record without parsing its value.",
    "ce_id": "The CloudEvents id (the envelope's `id`).",
    "traceparent": "W3C trace context of the publishing span; its parent is the request that "
    "caused the event.",
    "tracestate": "W3C trace state, when the trace carries one.",
    "content-type": "Always application/json.",
    "correlation_id": "FastStream's own id of the record (not the CloudEvents id).",
}

# services/notifier/events.py and dlq.py (a unit test checks the names match).
RETRY_HEADERS = {
    "x-attempt": "The attempt this record is for (2 in tier 1).",
    "x-not-before-ms": "Epoch milliseconds before which the record is not attempted.",
    "x-error": "Why the previous attempt failed.",
    "x-origin-topic": "The topic the record was first read from.",
    "x-replayed-from": "partition:offset of the dead letter a replay re-queued.",
}
DLQ_HEADERS = {
    "x-dlq-reason": "The error class: PermanentError, PoisonMessageError, RetriesExhausted, ...",
    "x-error": "The error message.",
    "x-dlq-attempts": "How many attempts were made.",
    "x-origin-topic": "The topic the record was first read from.",
    "x-dlq-at": "Epoch milliseconds when it was dead-lettered.",
}

TIER_PARAMETER: dict[str, Any] = {
    "description": "The retry tier, 1 to NOTIFIER_RETRY_TIERS (4 by default): tier n holds "
    "records waiting retry_base_delay_s * retry_factor**(n-1) seconds (+/- jitter).",
    "default": "1",
}

PRODUCER_PARAMETER: dict[str, Any] = {
    "description": "The producer's name, as `make producer NAME=<name>` created it: one topic-name "
    "segment of lower-case letters, digits, - and _ (never dlq).",
    "examples": ["crm"],
}

# The domain events that answer a command that succeeded (with its id as `causationid`).
SUCCESS_ANSWERS = ("task.created.v1", "task.updated.v1", "task.completed.v1")
REJECTED = "command.rejected.v1"


@dataclass(frozen=True)
class Operation:
    """Who sends or receives on a channel, and with which consumer group."""

    action: str
    channel: str
    summary: str
    group: str | None = None
    # The channel's messages this operation sends (all of them when empty).
    messages: tuple[str, ...] = ()


# What each service does on each channel, by operation id.
OPERATIONS: dict[str, Operation] = {
    "auth.publishUserEvents": Operation(
        "send", "users", "auth's outbox relay publishes every account event."
    ),
    "tasks.publishTaskEvents": Operation(
        "send", "tasks", "tasks' outbox relay publishes every task event."
    ),
    "producer.sendCommands": Operation(
        "send", "commands", "An event producer sends commands on its own topic."
    ),
    "tasks.receiveCommands": Operation(
        "receive",
        "commands",
        "tasks handles the task commands and answers unreadable records; it passes "
        "notification.send.v1 over to the notifier.",
        "tasks.commands",
    ),
    "notifier.receiveCommands": Operation(
        "receive",
        "commands",
        "The notifier mails notification.send.v1 within the user's preferences and send cap, "
        "once per (producer, id); it passes every other type over.",
        "notifier.commands",
    ),
    "notifier.sendAnswers": Operation(
        "send",
        "answers",
        "The outcome of every notification.send.v1, to its producer.",
        messages=("notification.sent.v1", REJECTED),
    ),
    "tasks.receiveUserEvents": Operation(
        "receive",
        "users",
        "tasks keeps the directory of users a command may name (user.registered.v1).",
        "tasks.users",
    ),
    "tasks.sendAnswers": Operation(
        "send",
        "answers",
        "The outcome of every task command, to its producer.",
        messages=(*SUCCESS_ANSWERS, REJECTED),
    ),
    "producer.receiveAnswers": Operation(
        "receive", "answers", "A producer reads the answers to its own commands."
    ),
    "notifier.receiveUserEvents": Operation(
        "receive", "users", "Welcome and password-reset mails.", "notifier.users"
    ),
    "notifier.receiveTaskEvents": Operation(
        "receive",
        "tasks",
        "Due-soon reminders (other task types are passed over).",
        "notifier.tasks",
    ),
    "notifier.sendRetry": Operation(
        "send", "notifierRetry", "A failed delivery that may pass waits in a tier."
    ),
    "notifier.receiveRetry": Operation(
        "receive",
        "notifierRetry",
        "Attempts a retried record once it is due.",
        "notifier.retry",
    ),
    "notifier.sendDeadLetter": Operation(
        "send", "notifierDlq", "Parks a record the notifier cannot deliver."
    ),
    "notifier.receiveDeadLetters": Operation(
        "receive",
        "notifierDlq",
        "`make dlq-list` / `make dlq-replay` read the DLQ.",
        "notifier.dlq-replay",
    ),
    "gateway.receiveTaskEvents": Operation(
        "receive", "tasks", "Bumps the owner's response-cache generation.", "gateway.tasks"
    ),
    "gateway.receiveUserEvents": Operation(
        "receive",
        "users",
        "Refuses revoked sessions' access tokens at once.",
        "gateway.users",
    ),
}
