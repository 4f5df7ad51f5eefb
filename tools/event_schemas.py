"""Write or check the committed contract: docs/events/<type>.json and docs/asyncapi.json.

`python -m tools.event_schemas` (`make event-schemas`) regenerates both from the models, but
refuses, writing nothing, when a type's new schema is not backward compatible with its committed
one: a published type never changes incompatibly, a new version is a new type published beside
it. `--check` only reports (the tests run the same checks).

Compatibility (jsoncompat): an event Taskbus publishes is read by consumers built on any version,
and from a topic that still holds older records, so its new schema must accept exactly what the
old one did ("both": no field added, removed or retyped, no enum value added or removed). A
command Taskbus consumes must still accept everything producers were allowed to send
("deserializer": a new optional field is fine, a new required one, a removed one, a narrowed
enum or limit are not).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

import jsoncompat
from pydantic import BaseModel, SecretStr

from common.asyncapi import document
from common.event_schemas import all_schemas, model_types
from common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = ROOT / "docs" / "events"
ASYNCAPI_FILE = ROOT / "docs" / "asyncapi.json"
Role = Literal["both", "deserializer"]
# Keywords jsoncompat 0.3.1 does not compare (an added `pattern` or `format` passes as
# compatible), so they are compared here, conservatively: by location and exact value.
UNCHECKED = frozenset({"pattern", "format"})


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render(value: Any) -> str:
    """The committed text of a schema or document (stable, reviewable diffs)."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def role(model: type[BaseModel]) -> Role:
    """Which direction must stay compatible: commands are only read by Taskbus."""
    return "deserializer" if hasattr(model, "command_type") else "both"


def _constraints(node: Any, path: str = "") -> set[tuple[str, str, str]]:
    """Every (location, keyword, value) of the keywords jsoncompat leaves unchecked."""
    found: set[tuple[str, str, str]] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in UNCHECKED and isinstance(value, str):
                found.add((path, key, value))
            found |= _constraints(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found |= _constraints(item, f"{path}/{i}")
    return found


def compatible(old: dict[str, Any], new: dict[str, Any], direction: Role) -> bool:
    """Whether `new` may replace `old` under `direction` (see the module docstring)."""
    if not jsoncompat.check_compat(json.dumps(old), json.dumps(new), direction):
        return False
    # A pattern or format added (or changed) narrows what is accepted; one dropped widens it.
    before, after = _constraints(old), _constraints(new)
    narrowed, widened = after - before, before - after
    return not narrowed if direction == "deserializer" else not (narrowed or widened)


def default_asyncapi() -> dict[str, Any]:
    """The document of a deployment with default names (no topic prefix) over SASL_SSL.

    Built without reading the environment, so the committed copy is the same on every machine.
    """
    settings = ServiceSettings.model_construct(
        kafka_security_protocol="SASL_SSL",
        # Required with SASL; the document names no principal and no secret.
        kafka_username="svc-gateway",
        kafka_password=SecretStr("not-in-the-document"),
    )
    return document(settings)


def breaking(events_dir: Path = EVENTS_DIR) -> list[str]:
    """Committed types whose current schema is missing or not compatible with the committed one."""
    models = model_types()
    current = all_schemas()
    found = []
    for path in sorted(events_dir.glob("*.json")):
        event_type = path.name.removesuffix(".json")
        if event_type not in current:
            found.append(f"{event_type}: published, but no model defines it any more")
            continue
        committed = json.loads(path.read_text())
        direction = role(models[event_type])
        if not compatible(committed, current[event_type], direction):
            found.append(
                f"{event_type}: not backward compatible with {_shown(path)} "
                f"({direction}); publish the change as a new type (e.g. a .v2) beside it"
            )
    return found


def _generated(events_dir: Path, asyncapi_file: Path) -> dict[Path, str]:
    wanted = {events_dir / f"{t}.json": render(s) for t, s in all_schemas().items()}
    wanted[asyncapi_file] = render(default_asyncapi())
    return wanted


def stale(events_dir: Path = EVENTS_DIR, asyncapi_file: Path = ASYNCAPI_FILE) -> list[str]:
    """Committed files that differ from what the models generate now (or are missing)."""
    wanted = _generated(events_dir, asyncapi_file)
    found = [
        f"{_shown(path)}: differs from the models; run `make event-schemas`"
        for path, text in wanted.items()
        if not path.exists() or path.read_text() != text
    ]
    found += [
        f"{_shown(path)}: no model generates it"
        for path in sorted(events_dir.glob("*.json"))
        if path not in wanted
    ]
    return found


def write(events_dir: Path = EVENTS_DIR, asyncapi_file: Path = ASYNCAPI_FILE) -> list[str]:
    """Regenerate every file, unless a change is breaking (then nothing is written)."""
    if problems := breaking(events_dir):
        return problems
    wanted = _generated(events_dir, asyncapi_file)  # everything built before anything written
    events_dir.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
    return []


def main(argv: list[str] | None = None) -> int:
    """Write (default) or --check the contract files; prints every problem, non-zero if any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report only, write nothing")
    args = parser.parse_args(argv)
    problems = breaking() + stale() if args.check else write()
    print("\n".join(problems) or "event schemas ok", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
