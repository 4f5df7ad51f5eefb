"""Kafka security without a broker: the ACL table's shape, producer names, the client settings."""

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from common.kafka import kafka_options
from common.kafka_acls import (
    SERVICES,
    check_producer_name,
    name_overlaps,
    producer_acls,
    service_acls,
)
from common.kafka_admin import Acl
from common.settings import ServiceSettings
from deploy.local.kafka_security import broker_properties, create_credentials, new_password
from tests.support.kafka_auth import OBSERVER_ENV_NAMES, PRODUCTION_KAFKA


def test_a_producer_may_write_its_commands_and_read_its_answers_and_nothing_else() -> None:
    acls = producer_acls("crm", "t1.")
    user = "User:producer-crm"
    assert set(acls) == {
        Acl(user, "topic", "t1.taskbus.commands.crm", "literal", "WRITE"),
        Acl(user, "topic", "t1.taskbus.commands.crm", "literal", "DESCRIBE"),
        Acl(user, "topic", "t1.taskbus.answers.crm", "literal", "READ"),
        Acl(user, "topic", "t1.taskbus.answers.crm", "literal", "DESCRIBE"),
        Acl(user, "group", "t1.producer-crm", "prefixed", "READ"),
    }


def test_service_rules_carry_the_topic_prefix_but_the_cluster_keeps_its_name() -> None:
    gateway = service_acls("gateway", "t2.")
    assert {a.name for a in gateway if a.resource == "cluster"} == {"kafka-cluster"}
    assert all(a.name.startswith("t2.") for a in gateway if a.resource != "cluster")
    everything = [a for s in SERVICES for a in service_acls(s)]

    # Only auth writes users, only tasks writes tasks; tasks and the notifier (for
    # notification.send.v1) read the commands and write the answers.
    def who(name: str, operation: str) -> set[str]:
        return {a.principal for a in everything if a.name == name and a.operation == operation}

    assert who("taskbus.users", "WRITE") == {"User:svc-auth"}
    assert who("taskbus.tasks", "WRITE") == {"User:svc-tasks"}
    assert who("taskbus.answers.", "WRITE") == {"User:svc-tasks", "User:svc-notifier"}
    assert who("taskbus.commands.", "READ") == {"User:svc-tasks", "User:svc-notifier"}


@pytest.mark.parametrize("name", ["", "dlq", "Crm", "crm.eu", "-crm", "x" * 50])
def test_names_that_cannot_be_a_producers_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="producer name"):
        check_producer_name(name)


def test_a_name_sharing_another_producers_group_prefix_is_found() -> None:
    assert name_overlaps("crm-eu", ["crm", "billing"]) == "crm"
    assert name_overlaps("cr", ["crm"]) == "crm"
    assert name_overlaps("crm", ["crm", "billing"]) is None


def test_sasl_needs_credentials_and_production_needs_tls_and_a_real_password() -> None:
    with pytest.raises(ValidationError, match="TASKBUS_KAFKA_PASSWORD are required"):
        ServiceSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="svc-x")
    with pytest.raises(ValidationError, match="SASL_SSL only"):
        ServiceSettings(environment="production")
    plain = {**PRODUCTION_KAFKA, "kafka_security_protocol": "SASL_PLAINTEXT"}
    with pytest.raises(ValidationError, match="SASL_SSL only"):
        ServiceSettings(environment="production", **plain)
    generated = {**PRODUCTION_KAFKA, "kafka_password": SecretStr(new_password())}
    with pytest.raises(ValidationError, match="generated development"):
        ServiceSettings(environment="production", **generated)
    assert ServiceSettings(environment="production", **PRODUCTION_KAFKA).is_production


def test_every_client_gets_the_principal_of_its_settings() -> None:
    assert kafka_options(ServiceSettings(kafka_security_protocol="PLAINTEXT")) == {}
    settings = ServiceSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_username="svc-tasks",
        kafka_password=SecretStr("secret"),
    )
    assert kafka_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-tasks",
        "sasl_plain_password": "secret",
    }
    tls = ServiceSettings(environment="production", **PRODUCTION_KAFKA)
    assert kafka_options(tls)["ssl_context"] is not None


def test_the_local_broker_config_admits_no_anonymous_client(tmp_path: Path) -> None:
    credentials = create_credentials(tmp_path / "credentials.json")
    assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600
    props = broker_properties(credentials)
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("SASL_PLAINTEXT", "")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"


def test_unit_tests_clear_every_variable_the_observer_env_sets(tmp_path: Path) -> None:
    credentials = create_credentials(tmp_path / "credentials.json")
    assert tuple(credentials.admin_env()) == OBSERVER_ENV_NAMES
