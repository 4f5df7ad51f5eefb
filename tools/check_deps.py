"""Fail when a third-party module imported by the project is not a declared dependency."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("common", "services", "gateway", "client", "deploy", "tests", "bench", "tools")
LOCAL = set(SOURCES)


def _name(requirement: str) -> str:
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower().replace("_", "-")


def declared() -> set[str]:
    """Distribution names in pyproject's dependencies and dependency groups."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {_name(r) for r in project["project"]["dependencies"]}
    for group in project.get("dependency-groups", {}).values():
        names |= {_name(r) for r in group if isinstance(r, str)}
    return names


def imported() -> dict[str, Path]:
    """Top-level modules imported anywhere in the sources, with one file that imports each."""
    found: dict[str, Path] = {}
    for source in SOURCES:
        for path in (ROOT / source).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    tops = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    found.setdefault(top, path)
    return found


def undeclared() -> list[str]:
    """Imported third-party modules whose distribution is not declared."""
    dists = packages_distributions()
    names = declared()
    missing = []
    for module, path in sorted(imported().items()):
        if module in LOCAL or module in sys.stdlib_module_names:
            continue
        owners = {_name(d) for d in dists.get(module, [module])}
        if not owners & names:
            missing.append(
                f"{module} ({', '.join(sorted(owners))}), imported by {path.relative_to(ROOT)}"
            )
    return missing


def main() -> int:
    """Print every undeclared import; non-zero if any."""
    missing = undeclared()
    print("\n".join(missing) or "every import is declared")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
