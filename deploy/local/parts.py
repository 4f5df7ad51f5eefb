"""What the local stack is made of: each part's command, ports, environment and health check."""

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.kafka import kafka_options
from common.settings import ServiceSettings
from deploy.local.kafka_security import (
    Credentials,
    credentials_path,
    format_scram,
    load_credentials,
    producers_path,
    secure_properties,
)
from deploy.local.probes import (
    HealthCheck,
    check_kafka,
    check_mongo,
    check_redis,
    check_smtp,
    http_check,
)

ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
KAFKA_HEAP = "-Xmx768m"


def render_kafka_properties(path: Path, port: int, controller_port: int, data: Path) -> None:
    """Write a single-node broker+controller config from the template."""
    template = (KAFKA_DIR / "server.properties.in").read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        template.replace("@PORT@", str(port))
        .replace("@CONTROLLER_PORT@", str(controller_port))
        .replace("@DATA_DIR@", str(data))
    )


def kafka_java(cache_dir: Path, main_class: str, *args: str) -> list[str]:
    """Run a Kafka class from the downloaded jars, logging through our log4j2 config."""
    if shutil.which("java") is None:
        raise RuntimeError("java is required to run Kafka")
    jars = str(cache_dir / "kafka" / "libs" / "*")
    log4j = f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}"
    return ["java", "-cp", jars, log4j, main_class, *args]


def kafka_cluster_id(cache_dir: Path) -> str:
    """A fresh KRaft cluster id (every node of one cluster is formatted with the same one)."""
    tool = kafka_java(cache_dir, "kafka.tools.StorageTool", "random-uuid")
    out = subprocess.run(tool, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def format_kafka(
    cache_dir: Path, properties: Path, cluster_id: str, scram: Sequence[str] = ()
) -> None:
    """Format a log dir: `--standalone` unless the config names static quorum voters.

    `scram` adds SCRAM users (`SCRAM-SHA-512=[name=..,password=..]`) to the new metadata log.
    """
    static = "controller.quorum.voters=" in properties.read_text()
    quorum = [] if static else ["--standalone"]
    users = [arg for user in scram for arg in ("--add-scram", user)]
    args = ["format", "-t", cluster_id, *quorum, *users, "-c", str(properties)]
    tool = kafka_java(cache_dir, "kafka.tools.StorageTool", *args)
    subprocess.run(tool, capture_output=True, text=True, check=True)


def kafka_command(cache_dir: Path, properties: Path, heap: str = KAFKA_HEAP) -> list[str]:
    """The broker's java command line for `properties`, its heap capped."""
    java = kafka_java(cache_dir, "kafka.Kafka", str(properties))
    return [java[0], "-Xms256m", heap, "-XX:+UseG1GC", *java[1:]]


@dataclass(frozen=True)
class Part:
    """One supervised process."""

    name: str
    group: str  # "infra" or "app"
    ports: tuple[int, ...]
    port_env: str
    url: str
    command: list[str]
    check: HealthCheck
    env: dict[str, str] = field(default_factory=dict)


def _env_port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Stack:
    """The whole local deployment, rooted at one state directory."""

    state_dir: Path
    cache_dir: Path
    infra: list[Part]
    apps: list[Part]
    kafka_port: int
    kafka_controller_port: int

    @property
    def all_parts(self) -> list[Part]:
        """Infrastructure first, then services: the start order."""
        return [*self.infra, *self.apps]

    @property
    def log_dir(self) -> Path:
        """Each part's log file lives here."""
        return self.state_dir / "log"

    @property
    def mail_dir(self) -> Path:
        """The SMTP sink writes `.eml` files here."""
        return self.state_dir / "mail"

    @property
    def trace_dir(self) -> Path:
        """JSON-lines spans when no OTLP endpoint is configured."""
        return self.state_dir / "traces"

    @property
    def run_dir(self) -> Path:
        """supervisord's config, socket and pid file."""
        return self.state_dir / "run"

    @property
    def supervisor_conf(self) -> Path:
        """Rendered at every start from the current environment."""
        return self.run_dir / "supervisord.conf"

    @property
    def socket(self) -> Path:
        """supervisorctl talks to supervisord through this socket."""
        return self.run_dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        """supervisord's pid, written after it daemonises."""
        return self.run_dir / "supervisord.pid"

    @property
    def kafka_properties(self) -> Path:
        """The broker config, one per port so a second stack never shares a log dir."""
        return self.state_dir / "kafka" / f"server-{self.kafka_port}.properties"

    @property
    def kafka_credentials(self) -> Credentials | None:
        """The broker's SCRAM users, or None: the broker runs without SASL (see kafka_security)."""
        return load_credentials(credentials_path(self.state_dir))

    @property
    def kafka_data(self) -> Path:
        """Kafka's log dir (formatted on first start); one formatted with SCRAM users is apart."""
        kind = "sasl" if self.kafka_credentials else "data"
        return self.state_dir / "kafka" / f"{kind}-{self.kafka_port}"

    def prepare(self) -> None:
        """Create directories, render the Kafka config and format its storage the first time."""
        for directory in (self.log_dir, self.mail_dir, self.trace_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "ferretdb" / "data").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "ferretdb" / "state").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "redis").mkdir(parents=True, exist_ok=True)
        render_kafka_properties(
            self.kafka_properties, self.kafka_port, self.kafka_controller_port, self.kafka_data
        )
        credentials = self.kafka_credentials
        if credentials:
            ports = (self.kafka_port, self.kafka_controller_port)
            secure_properties(self.kafka_properties, credentials, *ports)
        if not (self.kafka_data / "meta.properties").exists():
            scram = format_scram(credentials) if credentials else []
            cluster_id = kafka_cluster_id(self.cache_dir)
            format_kafka(self.cache_dir, self.kafka_properties, cluster_id, scram)

    def kafka_command(self) -> list[str]:
        """The broker's command line (heap capped: two cores and 24 GiB are shared)."""
        return kafka_command(self.cache_dir, self.kafka_properties)

    def write_config(self) -> None:
        """Render supervisord.conf for the current ports and directories."""
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.log_dir / 'supervisord.log'}",
            f"pidfile={self.pidfile}",
            f"childlogdir={self.log_dir}",
            "minfds=4096",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
        ]
        credentials = self.kafka_credentials
        for part in self.all_parts:
            command = self.kafka_command() if part.name == "kafka" else part.command
            values = dict(part.env)
            if credentials and part.group == "app":
                values |= credentials.service_env(part.name)
            env = ",".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            lines += [
                f"[program:{part.name}]",
                "command=" + " ".join(_quote(arg) for arg in command),
                f"directory={ROOT}",
                "autostart=false",
                "autorestart=true",
                "startsecs=2",
                "startretries=5",
                "stopasgroup=true",
                "killasgroup=true",
                "stopwaitsecs=30",
                f"stdout_logfile={self.log_dir / (part.name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
                "redirect_stderr=true",
            ]
            if env:
                lines.append(f"environment={env}")
            lines.append("")
        for group, parts in (("infra", self.infra), ("app", self.apps)):
            lines += [f"[group:{group}]", "programs=" + ",".join(p.name for p in parts), ""]
        # It holds the services' Kafka passwords: readable by its owner only.
        self.supervisor_conf.touch(mode=0o600)
        self.supervisor_conf.chmod(0o600)
        self.supervisor_conf.write_text("\n".join(lines))


def _quote(arg: str) -> str:
    # supervisord splits command= with shlex; a literal % must be doubled.
    quoted = arg if arg and all(c not in arg for c in " \"'") else '"' + arg + '"'
    return quoted.replace("%", "%%")


@dataclass(frozen=True)
class Endpoint:
    """Where one part listens: the variable that moves it, its default port, its URL form."""

    name: str
    port_env: str
    default_port: int
    url_form: str  # `{port}` is replaced by the port in effect

    @property
    def port(self) -> int:
        """The port in effect (the variable, else the default)."""
        return _env_port(self.port_env, self.default_port)

    @property
    def url(self) -> str:
        """The URL clients use to reach the part."""
        return self.url_form.format(port=self.port)


# The one table every port, upstream URL and printed URL of the local stack is derived from.
ENDPOINTS = {
    e.name: e
    for e in (
        Endpoint("kafka", "TASKBUS_KAFKA_PORT", 9092, "127.0.0.1:{port}"),
        Endpoint("kafka-controller", "TASKBUS_KAFKA_CONTROLLER_PORT", 9093, "127.0.0.1:{port}"),
        Endpoint(
            "ferretdb",
            "TASKBUS_MONGO_PORT",
            27017,
            "mongodb://127.0.0.1:{port}/?directConnection=true",
        ),
        Endpoint("redis", "TASKBUS_REDIS_PORT", 6379, "redis://127.0.0.1:{port}/0"),
        Endpoint("mailsink", "TASKBUS_SMTP_PORT", 1025, "smtp://127.0.0.1:{port}"),
        Endpoint("auth", "AUTH_PORT", 8001, "http://127.0.0.1:{port}"),
        Endpoint("tasks", "TASKS_PORT", 8002, "http://127.0.0.1:{port}"),
        Endpoint("notifier", "NOTIFIER_PORT", 8003, "http://127.0.0.1:{port}"),
        Endpoint("gateway", "GATEWAY_PORT", 8000, "http://127.0.0.1:{port}"),
        # /metrics of the gateway: a listener of its own, never the public port.
        Endpoint(
            "gateway-metrics", "GATEWAY_METRICS_PORT", 9102, "http://127.0.0.1:{port}/metrics"
        ),
    )
}
APP_MODULES = {
    "auth": "services.auth",
    "tasks": "services.tasks",
    "notifier": "services.notifier",
    "gateway": "gateway",
}


def service_env(state: Path) -> dict[str, str]:
    """Every service's view of where the others are, derived from ENDPOINTS."""
    url = {name: e.url for name, e in ENDPOINTS.items()}
    return {
        "TASKBUS_KAFKA_BOOTSTRAP": url["kafka"],
        "TASKBUS_MONGO_URL": url["ferretdb"],
        "TASKBUS_REDIS_URL": url["redis"],
        "TASKBUS_JWKS_URL": f"{url['auth']}/.well-known/jwks.json",
        "TASKBUS_TRACE_DIR": str(state / "traces"),
        "NOTIFIER_SMTP_HOST": "127.0.0.1",
        "NOTIFIER_SMTP_PORT": str(ENDPOINTS["mailsink"].port),
        "NOTIFIER_RESET_URL_TEMPLATE": f"{url['gateway']}/reset-password?token={{token}}",
        "GATEWAY_AUTH_URL": url["auth"],
        "GATEWAY_TASKS_URL": url["tasks"],
        "GATEWAY_NOTIFIER_URL": url["notifier"],
        "GATEWAY_METRICS_PORT": str(ENDPOINTS["gateway-metrics"].port),
        # What each producer may send (make producer writes it, the tasks service reads it).
        "TASKS_PRODUCERS_FILE": str(producers_path(state)),
    }


def _infra_part(name: str, command: list[str], check: HealthCheck) -> Part:
    endpoint = ENDPOINTS[name]
    ports = (endpoint.port, ENDPOINTS["kafka-controller"].port) if name == "kafka" else ()
    return Part(
        name,
        "infra",
        ports or (endpoint.port,),
        endpoint.port_env,
        endpoint.url,
        command,
        check,
    )


def _infra(state: Path, cache: Path) -> list[Part]:
    url = {name: e.url for name, e in ENDPOINTS.items()}
    mongo, redis, smtp = (ENDPOINTS[n].port for n in ("ferretdb", "redis", "mailsink"))
    ferretdb = [
        str(cache / "bin" / "ferretdb"),
        "--handler=sqlite",
        f"--sqlite-url=file:{state / 'ferretdb' / 'data'}/",
        f"--listen-addr=127.0.0.1:{mongo}",
        f"--state-dir={state / 'ferretdb' / 'state'}",
        "--telemetry=disable",
        "--debug-addr=-",
        "--log-level=warn",
    ]
    redis_server = ["redis-server", "--port", str(redis), "--bind", "127.0.0.1", "--save", ""]
    redis_server += ["--appendonly", "no", "--dir", str(state / "redis"), "--daemonize", "no"]
    sink = [sys.executable, "-m", "deploy.local.mailsink", "--port", str(smtp)]
    sink += ["--dir", str(state / "mail")]
    return [
        _infra_part("kafka", [], lambda: check_kafka(url["kafka"], _admin_options(state))),
        _infra_part("ferretdb", ferretdb, lambda: check_mongo(url["ferretdb"])),
        _infra_part("redis", redis_server, lambda: check_redis(url["redis"])),
        _infra_part("mailsink", sink, lambda: check_smtp(smtp)),
    ]


def _admin_options(state: Path) -> dict[str, Any]:
    # Read at each check: `up` may create the credentials after the stack was loaded. Without
    # any (`up --apps` on another stack's broker), as the environment's TASKBUS_KAFKA_* say.
    credentials = load_credentials(credentials_path(state))
    return credentials.admin_options() if credentials else kafka_options(ServiceSettings())


def _app(name: str, env: dict[str, str]) -> Part:
    endpoint = ENDPOINTS[name]
    return Part(
        name,
        "app",
        (endpoint.port,),
        endpoint.port_env,
        endpoint.url,
        [sys.executable, "-m", APP_MODULES[name]],
        http_check(f"{endpoint.url}/readyz"),
        {**env, endpoint.port_env: str(endpoint.port)},
    )


def load_stack() -> Stack:
    """The stack as configured by the environment (ports and directories)."""
    state = Path(os.environ.get("TASKBUS_STATE_DIR", ROOT / "var")).resolve()
    cache = Path(os.environ.get("TASKBUS_CACHE", ROOT / "var")).resolve()
    env = service_env(state)
    apps = [_app(name, env) for name in APP_MODULES]
    kafka, controller = ENDPOINTS["kafka"].port, ENDPOINTS["kafka-controller"].port
    return Stack(state, cache, _infra(state, cache), apps, kafka, controller)
