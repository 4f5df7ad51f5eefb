"""Kafka admin requests aiokafka's admin client lacks: ACLs and SCRAM credentials.

aiokafka 0.14 has no CreateAcls, DescribeAcls or AlterUserScramCredentials; these are the wire
structs of those requests (Kafka protocol guide, the versions Kafka 4.x still serves), sent over an
admin client's connection. The local stack and the tests use them with the super user; no service
calls them.
"""

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    String,
    TaggedFields,
)

# Kafka's enums (org.apache.kafka.common.resource / acl), by name.
RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERN_TYPES = {"literal": 3, "prefixed": 4}
OPERATIONS = {
    "ALL": 2,
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DELETE": 6,
    "ALTER": 7,
    "DESCRIBE": 8,
    "DESCRIBE_CONFIGS": 10,
    "IDEMPOTENT_WRITE": 12,
}
_ANY, _MATCH, _ALLOW = 1, 2, 3
_SCRAM_MECHANISMS = {"SCRAM-SHA-256": (1, "sha256"), "SCRAM-SHA-512": (2, "sha512")}
SCRAM_ITERATIONS = 8192  # Kafka accepts 4096..16384

ResourceType = Literal["topic", "group", "cluster", "transactional_id"]
PatternType = Literal["literal", "prefixed"]


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: `principal` may do `operation` on the resource named (or prefixed) `name`."""

    principal: str  # "User:<name>"
    resource: ResourceType
    name: str
    pattern: PatternType
    operation: str  # a key of OPERATIONS


class CreateAclsResponse_v1(Response):  # type: ignore[misc]  # noqa: N801
    API_KEY = 30
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("error_code", Int16), ("error_message", String("utf-8")))),
    )


class CreateAclsRequest_v1(RequestStruct):  # type: ignore[misc]  # noqa: N801
    API_KEY = 30
    API_VERSION = 1
    RESPONSE_TYPE = CreateAclsResponse_v1
    SCHEMA = Schema(
        (
            "creations",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                ("resource_pattern_type", Int8),
                ("principal", String("utf-8")),
                ("host", String("utf-8")),
                ("operation", Int8),
                ("permission_type", Int8),
            ),
        ),
    )


class CreateAclsRequest(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, creations: list[tuple[Any, ...]]) -> None:
        self.creations = creations

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self.creations)


class DescribeAclsResponse_v1(Response):  # type: ignore[misc]  # noqa: N801
    API_KEY = 29
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", String("utf-8")),
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                ("pattern_type", Int8),
                (
                    "acls",
                    Array(
                        ("principal", String("utf-8")),
                        ("host", String("utf-8")),
                        ("operation", Int8),
                        ("permission_type", Int8),
                    ),
                ),
            ),
        ),
    )


class DescribeAclsRequest_v1(RequestStruct):  # type: ignore[misc]  # noqa: N801
    API_KEY = 29
    API_VERSION = 1
    RESPONSE_TYPE = DescribeAclsResponse_v1
    SCHEMA = Schema(
        ("resource_type_filter", Int8),
        ("resource_name_filter", String("utf-8")),
        ("pattern_type_filter", Int8),
        ("principal_filter", String("utf-8")),
        ("host_filter", String("utf-8")),
        ("operation", Int8),
        ("permission_type", Int8),
    )


class DescribeAclsRequest(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 29

    def __init__(self, principal: str) -> None:
        self.principal = principal

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(_ANY, None, _MATCH, self.principal, None, _ANY, _ANY)


class AlterUserScramCredentialsResponse_v0(Response):  # type: ignore[misc]  # noqa: N801
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user_name", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterUserScramCredentialsRequest_v0(RequestStruct):  # type: ignore[misc]  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = AlterUserScramCredentialsResponse_v0
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(
                ("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)
            ),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterUserScramCredentialsRequest(
    Request[AlterUserScramCredentialsRequest_v0]  # type: ignore[misc]
):
    API_KEY = 51

    def __init__(self, upsertions: list[tuple[Any, ...]]) -> None:
        self.upsertions = upsertions

    def build(
        self, request_struct_class: type[AlterUserScramCredentialsRequest_v0]
    ) -> AlterUserScramCredentialsRequest_v0:
        return request_struct_class([], self.upsertions, {})


class KafkaAdminError(RuntimeError):
    """The broker refused an admin request (the error code and message are in the text)."""


async def _send(admin: AIOKafkaAdminClient, request: Request[Any]) -> Any:
    # aiokafka's public admin API has no call for these requests; its client sends any Request.
    client = admin._client
    return await client.send(client.get_random_node(), request)


async def upsert_scram_users(
    admin: AIOKafkaAdminClient, users: dict[str, str], mechanism: str = "SCRAM-SHA-512"
) -> None:
    """Create or update SCRAM credentials (username -> password); the salt is new each time."""
    code, digest = _SCRAM_MECHANISMS[mechanism]
    upsertions: list[tuple[Any, ...]] = []
    for name, password in sorted(users.items()):
        salt = secrets.token_bytes(32)
        salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, SCRAM_ITERATIONS)
        upsertions.append((name, code, SCRAM_ITERATIONS, salt, salted, {}))
    if not upsertions:
        return
    response = await _send(admin, AlterUserScramCredentialsRequest(upsertions))
    failed = [f"{u}: {c} {m}" for u, c, m, _ in response.results if c != 0]
    if failed:
        raise KafkaAdminError("cannot set SCRAM credentials: " + "; ".join(failed))


async def create_acls(admin: AIOKafkaAdminClient, acls: Iterable[Acl]) -> None:
    """Add ALLOW rules (from any host); adding a rule that exists already changes nothing."""
    creations = [
        (
            RESOURCE_TYPES[acl.resource],
            acl.name,
            PATTERN_TYPES[acl.pattern],
            acl.principal,
            "*",
            OPERATIONS[acl.operation],
            _ALLOW,
        )
        for acl in sorted(set(acls))
    ]
    if not creations:
        return
    response = await _send(admin, CreateAclsRequest(creations))
    failed = [f"{code} {message}" for code, message in response.results if code != 0]
    if failed:
        raise KafkaAdminError("cannot create ACLs: " + "; ".join(failed))


async def describe_acls(admin: AIOKafkaAdminClient, principal: str) -> set[Acl]:
    """Every ALLOW rule of `principal` the broker holds."""
    response = await _send(admin, DescribeAclsRequest(principal))
    if response.error_code != 0:
        raise KafkaAdminError(
            f"cannot describe ACLs: {response.error_code} {response.error_message}"
        )
    resources: dict[int, ResourceType] = {
        2: "topic",
        3: "group",
        4: "cluster",
        5: "transactional_id",
    }
    patterns: dict[int, PatternType] = {3: "literal", 4: "prefixed"}
    operations = {v: k for k, v in OPERATIONS.items()}
    return {
        Acl(who, resources[kind], name, patterns[pattern], operations[operation])
        for kind, name, pattern, rules in response.resources
        for who, _host, operation, permission in rules
        if permission == _ALLOW
    }
