"""`make producer NAME=crm [TYPES=..] [USERS=..] [ROTATE=1]`: an event producer on the local broker.

Creates (or refreshes) the producer's SCRAM user, its ACLs (write its command topic, read its
answers, nothing else; common/kafka_acls.py) and both topics on the running broker, records what
it may send in var/kafka/producers.json (the tasks service re-reads the file), and prints what
the producer needs to connect. Idempotent: a second call prints the same password unless
ROTATE=1 asks for a new one (the old one stops working at once).
"""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from common.commands import COMPLETE, CREATE, UPDATE
from common.events import answers_topic, commands_topic
from common.kafka_acls import check_producer_name, name_overlaps, producer_principal
from deploy.local.kafka_security import (
    MECHANISM,
    PROTOCOL,
    Credentials,
    apply_principals,
    credentials_path,
    load_credentials,
    producers_path,
)
from deploy.local.parts import ENDPOINTS, load_stack

DEFAULT_TYPES = (CREATE, UPDATE, COMPLETE)


def _policy(path: Path, name: str, types: str | None, users: str | None) -> dict[str, Any]:
    """Update the producer's entry in the policies file (atomically) and return it."""
    policies: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    entry = policies.get(name, {"types": list(DEFAULT_TYPES), "users": "*"})
    if types is not None:
        entry["types"] = [t.strip() for t in types.split(",") if t.strip()]
    if users is not None:
        entry["users"] = "*" if users.strip() == "*" else [u.strip() for u in users.split(",")]
    policies[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(policies, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return dict(entry)


async def _create_topics(bootstrap: str, credentials: Credentials, names: list[str]) -> None:
    partitions = int(os.environ.get("TASKBUS_KAFKA_PARTITIONS", "6"))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **credentials.admin_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, *_ in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise RuntimeError(f"cannot create topic {topic}: error code {code}")
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="producer", description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--types", help="comma-separated command types it may send")
    parser.add_argument("--users", help="'*' or comma-separated user ids it may act for")
    parser.add_argument("--rotate", action="store_true", help="issue a new password")
    args = parser.parse_args(argv)
    try:
        name = check_producer_name(args.name)
    except ValueError as exc:
        print(f"producer: {exc}", file=sys.stderr)
        return 2
    stack = load_stack()
    path = credentials_path(stack.state_dir)
    credentials = load_credentials(path)
    if credentials is None:
        print(
            f"producer: no {path}: the local broker runs without SASL (started before it);"
            " `make down && make up` starts one with SASL and ACLs",
            file=sys.stderr,
        )
        return 1
    known = [u.removeprefix("producer-") for u in credentials.users if u.startswith("producer-")]
    overlap = name_overlaps(name, known)
    if overlap:
        print(
            f"producer: {name!r} and the existing {overlap!r} would share consumer-group names"
            " (one is a prefix of the other); choose another name",
            file=sys.stderr,
        )
        return 2
    user = producer_principal(name)
    rotated = args.rotate or user not in credentials.users
    password = credentials.password(user, rotate=args.rotate)
    credentials.save()
    prefix = os.environ.get("TASKBUS_TOPIC_PREFIX", "")
    bootstrap = ENDPOINTS["kafka"].url
    topics = [f"{prefix}{commands_topic(name)}", f"{prefix}{answers_topic(name)}"]
    asyncio.run(apply_principals(bootstrap, credentials, [prefix], [name]))
    asyncio.run(_create_topics(bootstrap, credentials, topics))
    policy = _policy(producers_path(stack.state_dir), name, args.types, args.users)
    users = policy["users"] if policy["users"] == "*" else ", ".join(policy["users"])
    print(
        f"producer {name} ({'new password' if rotated else 'password unchanged'}):\n"
        f"  bootstrap          {bootstrap}\n"
        f"  security_protocol  {PROTOCOL}\n"
        f"  sasl_mechanism     {MECHANISM}\n"
        f"  username           {user}\n"
        f"  password           {password}\n"
        f"  commands topic     {topics[0]}  (write)\n"
        f"  answers topic      {topics[1]}  (read; consumer groups named {user}*)\n"
        f"  may send           {', '.join(policy['types'])}\n"
        f"  for users          {users}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
