"""What the local stack is made of: each part's command, ports, environment and health check."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
    def kafka_data(self) -> Path:
        """Kafka's log dir (formatted on first start)."""
        return self.state_dir / "kafka" / f"data-{self.kafka_port}"

    def prepare(self) -> None:
        """Create directories, render the Kafka config and format its storage the first time."""
        for directory in (self.log_dir, self.mail_dir, self.trace_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "ferretdb" / "data").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "ferretdb" / "state").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "redis").mkdir(parents=True, exist_ok=True)
        template = (KAFKA_DIR / "server.properties.in").read_text()
        self.kafka_properties.parent.mkdir(parents=True, exist_ok=True)
        self.kafka_properties.write_text(
            template.replace("@PORT@", str(self.kafka_port))
            .replace("@CONTROLLER_PORT@", str(self.kafka_controller_port))
            .replace("@DATA_DIR@", str(self.kafka_data))
        )
        if not (self.kafka_data / "meta.properties").exists():
            self._format_kafka()

    def _java(self, main_class: str, *args: str) -> list[str]:
        if shutil.which("java") is None:
            raise RuntimeError("java is required to run Kafka")
        return [
            "java",
            "-cp",
            str(self.cache_dir / "kafka" / "libs" / "*"),
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            main_class,
            *args,
        ]

    def _format_kafka(self) -> None:
        cluster_id = (
            subprocess.run(
                self._java("kafka.tools.StorageTool", "random-uuid"),
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "--standalone",
                "-c",
                str(self.kafka_properties),
            ),
            capture_output=True,
            text=True,
            check=True,
        )

    def kafka_command(self) -> list[str]:
        """The broker's command line (heap capped: two cores and 24 GiB are shared)."""
        java = self._java("kafka.Kafka", str(self.kafka_properties))
        return [java[0], "-Xms256m", KAFKA_HEAP, "-XX:+UseG1GC", *java[1:]]

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
        for part in self.all_parts:
            command = self.kafka_command() if part.name == "kafka" else part.command
            env = ",".join(f'{k}="{v}"' for k, v in sorted(part.env.items()))
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
        self.supervisor_conf.write_text("\n".join(lines))


def _quote(arg: str) -> str:
    # supervisord splits command= with shlex; a literal % must be doubled.
    quoted = arg if arg and all(c not in arg for c in " \"'") else '"' + arg + '"'
    return quoted.replace("%", "%%")


def load_stack() -> Stack:
    """The stack as configured by the environment (ports and directories)."""
    state = Path(os.environ.get("TASKBUS_STATE_DIR", ROOT / "var")).resolve()
    cache = Path(os.environ.get("TASKBUS_CACHE", ROOT / "var")).resolve()
    kafka = _env_port("TASKBUS_KAFKA_PORT", 9092)
    controller = _env_port("TASKBUS_KAFKA_CONTROLLER_PORT", 9093)
    mongo = _env_port("TASKBUS_MONGO_PORT", 27017)
    redis = _env_port("TASKBUS_REDIS_PORT", 6379)
    smtp = _env_port("TASKBUS_SMTP_PORT", 1025)
    ports = {
        name: _env_port(f"{name.upper()}_PORT", default)
        for name, default in (
            ("gateway", 8000),
            ("auth", 8001),
            ("tasks", 8002),
            ("notifier", 8003),
        )
    }
    kafka_bootstrap = f"127.0.0.1:{kafka}"
    mongo_url = f"mongodb://127.0.0.1:{mongo}/?directConnection=true"
    redis_url = f"redis://127.0.0.1:{redis}/0"
    ferretdb = str(cache / "bin" / "ferretdb")
    infra = [
        Part(
            "kafka",
            "infra",
            (kafka, controller),
            "TASKBUS_KAFKA_PORT",
            kafka_bootstrap,
            [],
            lambda: check_kafka(kafka_bootstrap),
        ),
        Part(
            "ferretdb",
            "infra",
            (mongo,),
            "TASKBUS_MONGO_PORT",
            mongo_url,
            [
                ferretdb,
                "--handler=sqlite",
                f"--sqlite-url=file:{state / 'ferretdb' / 'data'}/",
                f"--listen-addr=127.0.0.1:{mongo}",
                f"--state-dir={state / 'ferretdb' / 'state'}",
                "--telemetry=disable",
                "--debug-addr=-",
                "--log-level=warn",
            ],
            lambda: check_mongo(mongo_url),
        ),
        Part(
            "redis",
            "infra",
            (redis,),
            "TASKBUS_REDIS_PORT",
            redis_url,
            [
                "redis-server",
                "--port",
                str(redis),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(state / "redis"),
                "--daemonize",
                "no",
            ],
            lambda: check_redis(redis_url),
        ),
        Part(
            "mailsink",
            "infra",
            (smtp,),
            "TASKBUS_SMTP_PORT",
            f"smtp://127.0.0.1:{smtp}",
            [
                sys.executable,
                "-m",
                "deploy.local.mailsink",
                "--port",
                str(smtp),
                "--dir",
                str(state / "mail"),
            ],
            lambda: check_smtp(smtp),
        ),
    ]
    shared_env = {
        "TASKBUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TASKBUS_MONGO_URL": mongo_url,
        "TASKBUS_REDIS_URL": redis_url,
        "TASKBUS_TRACE_DIR": str(state / "traces"),
        "NOTIFIER_SMTP_PORT": str(smtp),
        "GATEWAY_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
        "GATEWAY_TASKS_URL": f"http://127.0.0.1:{ports['tasks']}",
    }
    modules = {
        "gateway": "gateway",
        "auth": "services.auth",
        "tasks": "services.tasks",
        "notifier": "services.notifier",
    }
    apps = [
        Part(
            name,
            "app",
            (port,),
            f"{name.upper()}_PORT",
            f"http://127.0.0.1:{port}",
            [sys.executable, "-m", modules[name]],
            http_check(f"http://127.0.0.1:{port}/readyz"),
            {**shared_env, f"{name.upper()}_PORT": str(port)},
        )
        for name, port in (
            ("auth", ports["auth"]),
            ("tasks", ports["tasks"]),
            ("notifier", ports["notifier"]),
            ("gateway", ports["gateway"]),
        )
    ]
    return Stack(state, cache, infra, apps, kafka, controller)
