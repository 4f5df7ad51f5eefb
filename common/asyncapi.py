"""The AsyncAPI 3.0 document of every Kafka topic Taskbus reads or writes.

Generated, never written by hand: channels come from the topic names in `common.events`, messages
from every `Payload` model (`common.event_schemas`), so a new event or command type appears here
with its schema. The gateway serves it at `/asyncapi.json`; `make event-schemas` also writes the
default deployment's copy to `docs/asyncapi.json`, and the tests validate it with the official
AsyncAPI parser.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from common.asyncapi_text import (
    DESCRIPTION,
    DLQ_HEADERS,
    OPERATIONS,
    PRODUCER_PARAMETER,
    RECORD_HEADERS,
    RETENTION_MS,
    RETRY_HEADERS,
    SECURITY,
    SUCCESS_ANSWERS,
    TIER_PARAMETER,
    Operation,
)
from common.event_schemas import cloudevent_schema, model_types
from common.events import (
    ANSWERS_PREFIX,
    COMMANDS_PREFIX,
    NOTIFIER_DLQ_TOPIC,
    NOTIFIER_RETRY_TOPIC,
    TASKS_TOPIC,
    USERS_TOPIC,
)
from common.settings import ServiceSettings

VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
COMPONENT_REFS = "#/components/schemas/{model}"
# The notifier's settings allow up to this many retry tiers (NotifierSettings.retry_tiers).
MAX_RETRY_TIERS = 8
RETRIED = "notifier.retried"
DEAD_LETTER = "notifier.dead_letter"
COMMANDS = COMMANDS_PREFIX + "{producer}"
ANSWERS = ANSWERS_PREFIX + "{producer}"


@dataclass(frozen=True)
class Channel:
    """One topic (or family of topics, with parameters) and the messages it carries."""

    address: str
    description: str
    messages: tuple[str, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)


def _types_on(types: Mapping[str, type[BaseModel]], topic: str) -> tuple[str, ...]:
    return tuple(t for t, model in types.items() if getattr(model, "topic", None) == topic)


def channels(types: Mapping[str, type[BaseModel]]) -> dict[str, Channel]:
    """Every topic Taskbus reads or writes, by channel id."""
    return {
        "users": Channel(
            USERS_TOPIC,
            "Account events, published by auth through its outbox.",
            _types_on(types, USERS_TOPIC),
        ),
        "tasks": Channel(
            TASKS_TOPIC,
            "Task events, published by tasks through its outbox.",
            _types_on(types, TASKS_TOPIC),
        ),
        "commands": Channel(
            COMMANDS,
            "Commands from the event producer {producer}: only its principal may write here "
            "(prefixed ACL), so the topic names the sender. Keyed by the user id in `subject`; "
            "handled once per (producer, id), in order per user.",
            _types_on(types, COMMANDS),
            {"producer": PRODUCER_PARAMETER},
        ),
        "answers": Channel(
            ANSWERS,
            "Answers to {producer}'s commands, readable by that producer only: the domain "
            "event of a command that succeeded, or command.rejected.v1 with a problem; each "
            "carries the command's id as `causationid`.",
            tuple(t for t in SUCCESS_ANSWERS if t in types) + _types_on(types, ANSWERS),
            {"producer": PRODUCER_PARAMETER},
        ),
        "notifierRetry": Channel(
            NOTIFIER_RETRY_TOPIC + ".{tier}",
            "The notifier's retry ladder: a record whose delivery failed for a reason that may "
            "pass, byte for byte, in the tier of its next attempt; due at x-not-before-ms.",
            (RETRIED,),
            {"tier": TIER_PARAMETER | {"enum": [str(t) for t in range(1, MAX_RETRY_TIERS + 1)]}},
        ),
        "notifierDlq": Channel(
            NOTIFIER_DLQ_TOPIC,
            "Records the notifier gave up on (permanent error, retries exhausted, unparseable), "
            "byte for byte; `make dlq-list` shows them, `make dlq-replay` re-queues them.",
            (DEAD_LETTER,),
        ),
    }


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    described = {**RECORD_HEADERS, **(extra or {})}
    properties = {name: {"type": "string", "description": text} for name, text in described.items()}
    return {"type": "object", "properties": properties}


def _key_binding() -> dict[str, Any]:
    key = {"type": "string", "description": "The id of the user the record concerns."}
    return {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}}


def _message(event_type: str, model: type[BaseModel]) -> dict[str, Any]:
    summary = (model.__doc__ or event_type).strip().splitlines()[0]
    message: dict[str, Any] = {
        "name": event_type,
        "title": event_type,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": COMPONENT_REFS.format(model=event_type)},
        "correlationId": {
            "description": "The CloudEvents id: consumers deduplicate by it.",
            "location": "$message.payload#/id",
        },
        "bindings": _key_binding(),
    }
    # Taskbus reads no header of a command (everything is in the envelope); what it publishes
    # goes through common.kafka.publish, which sets these.
    if not hasattr(model, "command_type"):
        message["headers"] = {"$ref": "#/components/schemas/RecordHeaders"}
    return message


def _schemas(types: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """Envelope schemas by type, their shared definitions, and the record headers."""
    schemas: dict[str, Any] = {"RecordHeaders": _headers()}
    for event_type, model in types.items():
        envelope, definitions = cloudevent_schema(model, COMPONENT_REFS)
        for name, schema in definitions.items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two models named {name} with different schemas")
        schemas[event_type] = envelope
    return schemas


def _notifier_messages(sources: tuple[str, ...]) -> dict[str, Any]:
    original = {"oneOf": [{"$ref": COMPONENT_REFS.format(model=t)} for t in sources]}
    return {
        RETRIED: {
            "name": RETRIED,
            "summary": "An event of taskbus.users or taskbus.tasks waiting for its next attempt.",
            "contentType": "application/json",
            "headers": _headers(RETRY_HEADERS),
            "payload": original,
            "bindings": _key_binding(),
        },
        DEAD_LETTER: {
            "name": DEAD_LETTER,
            "summary": "The record as it was read: usually an event, possibly unparseable bytes.",
            "headers": _headers(DLQ_HEADERS),
            "payload": {"description": "The original record value, unchanged."},
            "bindings": _key_binding(),
        },
    }


def _channel(channel: Channel, topic: str, partitions: int, replicas: int) -> dict[str, Any]:
    ref = "#/components/messages/{}"
    out: dict[str, Any] = {
        "address": topic,
        "description": channel.description,
        "messages": {name: {"$ref": ref.format(name)} for name in channel.messages},
        "bindings": {
            "kafka": {
                "partitions": partitions,
                "replicas": replicas,
                "topicConfiguration": {"cleanup.policy": ["delete"], "retention.ms": RETENTION_MS},
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }
    if channel.parameters:
        out["parameters"] = dict(channel.parameters)
    return out


def _operation(op_id: str, op: Operation, channel: Channel, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": op.action,
        "channel": {"$ref": f"#/channels/{op.channel}"},
        "summary": op.summary,
        "messages": [
            {"$ref": f"#/channels/{op.channel}/messages/{m}"}
            for m in channel.messages
            if not op.messages or m in op.messages
        ],
    }
    if op.group is not None:
        group = {"type": "string", "enum": [prefix + op.group]}
        out["bindings"] = {"kafka": {"groupId": group, "bindingVersion": KAFKA_BINDING}}
    out["tags"] = [{"name": op_id.split(".", 1)[0]}]
    return out


def _servers(settings: ServiceSettings) -> dict[str, Any]:
    protocol = settings.kafka_security_protocol
    servers: dict[str, Any] = {}
    for i, host in enumerate(settings.kafka_bootstrap.split(","), start=1):
        server: dict[str, Any] = {
            "host": host.strip(),
            "protocol": "kafka-secure" if protocol == "SASL_SSL" else "kafka",
            "description": f"Kafka listener ({protocol}).",
        }
        if protocol != "PLAINTEXT":
            server["security"] = [{"$ref": "#/components/securitySchemes/scramSha512"}]
        servers[f"broker{i}"] = server
    return servers


def document(settings: ServiceSettings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for the deployment `settings` describe (prefix, brokers)."""
    types = model_types()
    table = channels(types)
    sources = table["users"].messages + table["tasks"].messages
    messages = {t: _message(t, model) for t, model in types.items()} | _notifier_messages(sources)
    size = (settings.kafka_partitions, settings.kafka_replication_factor)
    return {
        "asyncapi": VERSION,
        "info": {"title": "Taskbus events", "version": "1", "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": _servers(settings),
        "channels": {
            cid: _channel(ch, settings.topic(ch.address), *size) for cid, ch in table.items()
        },
        "operations": {
            oid: _operation(oid, op, table[op.channel], settings.topic_prefix)
            for oid, op in OPERATIONS.items()
        },
        "components": {
            "schemas": _schemas(types),
            "messages": messages,
            "securitySchemes": {"scramSha512": SECURITY},
        },
    }
