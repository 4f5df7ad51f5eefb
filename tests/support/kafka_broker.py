"""Private Kafka for fault tests (never the shared broker on :9092): one node, or a KRaft cluster
of combined broker+controller nodes, from the local stack's jars and config template."""

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from deploy.local.kafka_security import Credentials, format_scram, secure_properties
from deploy.local.parts import (
    format_kafka,
    kafka_cluster_id,
    kafka_command,
    render_kafka_properties,
)
from tests.support.infra import KAFKA_CREDENTIALS, STATE_DIR, free_port, wait_listening
from tests.support.waiting import eventually

HEAP = "-Xmx512m"  # several JVMs share two cores and 24 GiB with the rest of the stack


def _replicated(nodes: int) -> dict[str, str]:
    """Durability settings of an n-node cluster: every record on all nodes, acked by two."""
    if nodes == 1:
        return {}
    rf, isr = str(nodes), str(min(2, nodes))
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
    }


def _override(path: Path, values: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    """Set `values` in a properties file (replacing lines with the same key), drop `drop` keys."""
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.split("=", 1)[0] not in {*values, *drop}
    ]
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n")


@dataclass
class KafkaNode:
    """One combined broker+controller JVM."""

    node_id: int
    port: int
    controller_port: int
    properties: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the JVM (its log dir survives kills: a restart is a crash recovery)."""
        log = self.log_path.open("ab")
        command = kafka_command(STATE_DIR, self.properties, heap=HEAP)
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()

    def kill(self) -> None:
        """SIGKILL and reap: no controlled shutdown, nothing flushed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class KafkaCluster:
    """`size` KRaft nodes on free ports under `state`; replicated 3 ways with min ISR 2 if > 1.

    With `credentials` the nodes run SASL and ACLs as the local stack does, with its super user;
    by default those of the shared broker (none while it runs without SASL).
    """

    def __init__(
        self, state: Path, size: int = 1, credentials: Credentials | None = KAFKA_CREDENTIALS
    ) -> None:
        self.credentials = credentials
        self.nodes: list[KafkaNode] = []
        for node_id in range(1, size + 1):
            home = state / f"node-{node_id}"
            home.mkdir(parents=True, exist_ok=True)
            port, controller = free_port(), free_port()
            self.nodes.append(
                KafkaNode(node_id, port, controller, home / "server.properties", home / "kafka.log")
            )
        self.bootstrap = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        cluster_id = kafka_cluster_id(STATE_DIR)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            data = node.properties.parent / "data"
            render_kafka_properties(node.properties, node.port, node.controller_port, data)
            if size > 1:
                static = {"node.id": str(node.node_id), "controller.quorum.voters": voters}
                _override(
                    node.properties,
                    {**static, **_replicated(size)},
                    drop=("controller.quorum.bootstrap.servers",),
                )
            scram: list[str] = []
            if credentials is not None:
                ports = (node.port, node.controller_port)
                secure_properties(node.properties, credentials, *ports)
                scram = format_scram(credentials)
            format_kafka(STATE_DIR, node.properties, cluster_id, scram)

    def admin_options(self) -> dict[str, Any]:
        """aiokafka options of the cluster's super user (none without SASL)."""
        return self.credentials.admin_options() if self.credentials else {}

    async def start(self, within: float = 90.0) -> "KafkaCluster":
        """Start every node; return once all of them are brokers of the cluster."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await asyncio.to_thread(wait_listening, node.port, within, f"kafka {node.node_id}")
        await self.wait_brokers(len(self.nodes), within)
        return self

    async def wait_brokers(self, count: int, within: float = 90.0) -> None:
        """Wait until the cluster metadata lists `count` live brokers."""

        async def registered() -> bool:
            try:
                return len(await self.live_brokers()) >= count
            except Exception:  # noqa: BLE001 - not up yet: any client error means "poll again"
                return False

        await eventually(registered, within, f"{count} kafka brokers")

    async def live_brokers(self) -> list[int]:
        """Node ids the cluster's metadata lists as brokers right now."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=3000, **self.admin_options()
        )
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return sorted(int(broker["node_id"]) for broker in cluster["brokers"])
        finally:
            await admin.close()

    async def replicas(self, topic: str) -> dict[int, tuple[int, list[int]]]:
        """Partition -> (leader, replicas) of `topic`."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=3000, **self.admin_options()
        )
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
            return {
                p["partition"]: (p["leader"], list(p["replicas"])) for p in described["partitions"]
            }
        finally:
            await admin.close()

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id."""
        return next(node for node in self.nodes if node.node_id == node_id)

    def stop(self) -> None:
        """Kill every node (the test's state directory goes with tmp_path)."""
        for node in self.nodes:
            node.kill()
