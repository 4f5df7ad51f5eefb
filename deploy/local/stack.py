"""Runs the whole Taskbus stack on this machine without Docker, under supervisord.

    python -m deploy.local.stack up [--infra|--apps] start, wait until healthy, print URLs
    python -m deploy.local.stack down             stop everything, leave no process behind
    python -m deploy.local.stack status           what runs and whether it is healthy
    python -m deploy.local.stack logs [PART] [-f] the logs under var/log
    python -m deploy.local.stack with-infra CMD.. run CMD with the infrastructure up (for tests)

supervisord (a well-kept process supervisor) owns the processes: it daemonises, restarts a crashed
part, writes each part's log and stops process groups. It has no notion of "healthy" or of start
order, so this module adds both: infrastructure first, then the services, each waited on through
a real protocol check (Kafka metadata, Mongo ping, Redis PING, SMTP greeting, HTTP /readyz).
"""

import argparse
import asyncio
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from deploy.local.kafka_security import (
    apply_principals,
    create_credentials,
    credentials_path,
    producers_path,
)
from deploy.local.parts import Part, Stack, load_stack
from deploy.local.probes import part_healthy

SUPERVISORD = Path(sys.executable).with_name("supervisord")
SUPERVISORCTL = Path(sys.executable).with_name("supervisorctl")
INFRA_TIMEOUT_S = 120.0
APP_TIMEOUT_S = 60.0


class StackError(Exception):
    """A part did not come up, or the machine is not in a state to start it."""


def _ctl(stack: Stack, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SUPERVISORCTL), "-c", str(stack.supervisor_conf), *args],
        capture_output=True,
        text=True,
        check=check,
    )


def _supervisord_pid(stack: Stack) -> int | None:
    try:
        pid = int(stack.pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _states(stack: Stack) -> dict[str, str]:
    """Map part name -> supervisord state (RUNNING, STARTING, BACKOFF, FATAL, STOPPED...)."""
    if _supervisord_pid(stack) is None:
        return {}
    out = _ctl(stack, "status").stdout
    states = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and ":" in fields[0]:
            states[fields[0].split(":", 1)[1]] = fields[1]
    return states


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: connections lingering in TIME_WAIT are not a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _check_ports_free(parts: list[Part], states: dict[str, str]) -> None:
    for part in parts:
        if states.get(part.name) in ("RUNNING", "STARTING"):
            continue
        for port in part.ports:
            if _port_in_use(port):
                raise StackError(
                    f"port {port} ({part.name}) is already in use by another process; "
                    f"stop it or choose another port with {part.port_env}=<port>"
                )


def _log_tail(part: Part, stack: Stack, lines: int = 15) -> str:
    path = stack.log_dir / f"{part.name}.log"
    if not path.exists():
        return "(no log yet)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def _wait_healthy(stack: Stack, parts: list[Part], within: float) -> None:
    deadline = time.monotonic() + within
    pending = {part.name: part for part in parts}
    last_error: dict[str, str] = {}
    while pending:
        states = _states(stack)
        for name, part in list(pending.items()):
            if states.get(name) in ("FATAL", "EXITED", "BACKOFF"):
                raise StackError(
                    f"{name} did not start (supervisor state {states[name]}); "
                    f"last lines of {stack.log_dir / (name + '.log')}:\n{_log_tail(part, stack)}"
                )
            error = await part_healthy(part.check)
            if error is None:
                del pending[name]
                print(f"  {name:<9} healthy")
            else:
                last_error[name] = error
        if pending and time.monotonic() > deadline:
            name = next(iter(pending))
            raise StackError(
                f"{name} was not healthy within {within:.0f}s ({last_error.get(name)}); "
                f"last lines of {stack.log_dir / (name + '.log')}:\n"
                + _log_tail(pending[name], stack)
            )
        if pending:
            await asyncio.sleep(0.5)


def _start_supervisord(stack: Stack) -> None:
    if _supervisord_pid(stack) is not None:
        return
    stack.write_config()
    subprocess.run([str(SUPERVISORD), "-c", str(stack.supervisor_conf)], check=True)
    deadline = time.monotonic() + 15
    while _ctl(stack, "status").returncode == 4 or not stack.socket.exists():  # 4: cannot connect
        if time.monotonic() > deadline:
            raise StackError(f"supervisord did not start; see {stack.log_dir / 'supervisord.log'}")
        time.sleep(0.1)


def up(stack: Stack, *, infra_only: bool, apps_only: bool = False) -> bool:
    """Start what is not running and wait until healthy; True if supervisord was started here.

    `apps_only` starts the services against infrastructure that is already running elsewhere
    (another state directory), after checking it is healthy.
    """
    groups = [] if apps_only else [("infra", stack.infra, INFRA_TIMEOUT_S)]
    if apps_only:
        asyncio.run(_wait_healthy(stack, stack.infra, INFRA_TIMEOUT_S))
    if not infra_only:
        groups.append(("app", stack.apps, APP_TIMEOUT_S))
    started_supervisor = _supervisord_pid(stack) is None
    states = _states(stack)
    _check_ports_free([p for _, parts, _ in groups for p in parts], states)
    if not apps_only and states.get("kafka") not in ("RUNNING", "STARTING"):
        _ensure_credentials(stack)
    stack.prepare()
    _start_supervisord(stack)
    if apps_only:
        _apply_principals(stack)
    for group, parts, timeout in groups:
        print(f"starting {group}: {', '.join(p.name for p in parts)}")
        _ctl(stack, "start", f"{group}:*")
        asyncio.run(_wait_healthy(stack, parts, timeout))
        if group == "infra":
            _apply_principals(stack)
    return started_supervisor


def _ensure_credentials(stack: Stack) -> None:
    """Generate the Kafka credentials before the broker's first start here (SASL from then on).

    Only when this stack starts the broker: one already running without SASL keeps its clients.
    """
    path = credentials_path(stack.state_dir)
    if not path.exists():
        create_credentials(path)
        print(f"kafka: generated SASL/SCRAM credentials in {path} (mode 0600)")


def _apply_principals(stack: Stack) -> None:
    """Every service's SCRAM user and ACLs (and the known producers'), for the topic prefix in
    effect (TASKBUS_TOPIC_PREFIX: tests and second stacks share a broker under a prefix)."""
    credentials = stack.kafka_credentials
    if credentials is None:
        return
    prefix = os.environ.get("TASKBUS_TOPIC_PREFIX", "")
    producers = _producer_names(stack)
    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    asyncio.run(apply_principals(bootstrap, credentials, {"", prefix}, producers))


def _producer_names(stack: Stack) -> list[str]:
    path = producers_path(stack.state_dir)
    names: list[str] = list(json.loads(path.read_text())) if path.exists() else []
    return names


def down(stack: Stack) -> None:
    """Stop every part and supervisord itself; fail if a port is still held afterwards."""
    pid = _supervisord_pid(stack)
    everything = {p.name for p in stack.all_parts}
    ran = {n for n, st in _states(stack).items() if st != "STOPPED"} if pid else everything
    if pid is not None:
        _ctl(stack, "stop", "app:*")
        _ctl(stack, "stop", "infra:*")
        _ctl(stack, "shutdown")
        deadline = time.monotonic() + 60
        while _supervisord_pid(stack) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if _supervisord_pid(stack) is not None:
            raise StackError(f"supervisord (pid {pid}) did not exit within 60s")
    # Only parts this supervisor ran: with `up --apps` the infrastructure belongs to another.
    parts = [p for p in stack.all_parts if p.name in ran]
    held = [f"{p.name}:{port}" for p in parts for port in p.ports if _port_in_use(port)]
    if held:
        raise StackError("still listening after down: " + ", ".join(held))
    print("stack stopped")


def status(stack: Stack) -> int:
    """Print each part's supervisor state and health; non-zero unless all are healthy."""
    states = _states(stack)
    unhealthy = 0
    for part in stack.all_parts:
        error = asyncio.run(part_healthy(part.check))
        health = "healthy" if error is None else f"unhealthy ({error})"
        unhealthy += error is not None
        print(f"{part.name:<9} {states.get(part.name, 'not running'):<12} {part.url:<34} {health}")
    return 1 if unhealthy else 0


def logs(stack: Stack, part: str | None, follow: bool) -> None:
    """Show (or follow) the logs of one part or of all."""
    names = [part] if part else [p.name for p in stack.all_parts]
    files = [str(stack.log_dir / f"{name}.log") for name in names]
    files = [f for f in files if Path(f).exists()]
    if not files:
        print("no logs yet")
        return
    os.execvp("tail", ["tail", "-n", "40", *(["-F"] if follow else []), *files])  # noqa: S606


def print_urls(stack: Stack, *, infra_only: bool) -> None:
    """Where everything listens."""
    print("\nTaskbus infrastructure is up:" if infra_only else "\nTaskbus is up:")
    for part in stack.infra if infra_only else stack.all_parts:
        print(f"  {part.name:<9} {part.url}")
    print(f"\nlogs: {stack.log_dir}/  mail: {stack.mail_dir}/  traces: {stack.trace_dir}/")


def with_infra(stack: Stack, command: list[str]) -> int:
    """Run a command with the infrastructure up; stop it afterwards only if we started it."""
    started = up(stack, infra_only=True)
    try:
        return subprocess.run(command, check=False).returncode
    finally:
        if started:
            down(stack)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    only = p_up.add_mutually_exclusive_group()
    only.add_argument("--infra", action="store_true", help="only Kafka, FerretDB, Redis, SMTP")
    only.add_argument("--apps", action="store_true", help="only the services, on running infra")
    sub.add_parser("down")
    sub.add_parser("status")
    p_logs = sub.add_parser("logs")
    p_logs.add_argument("part", nargs="?")
    p_logs.add_argument("-f", "--follow", action="store_true")
    p_with = sub.add_parser("with-infra")
    p_with.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    # Health probes expect refusals while parts start; aiokafka would log each one as an error.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stack = load_stack()
    try:
        if args.cmd == "up":
            up(stack, infra_only=args.infra, apps_only=args.apps)
            print_urls(stack, infra_only=args.infra)
        elif args.cmd == "down":
            down(stack)
        elif args.cmd == "status":
            return status(stack)
        elif args.cmd == "logs":
            logs(stack, args.part, args.follow)
        else:
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            print(f"running: {shlex.join(command)}")
            return with_infra(stack, command)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
