"""Fail when a module in common/, services/ or gateway/ is over 350 lines or a function over 60."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "services", "gateway")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def oversized(path: Path) -> list[str]:
    """What in `path` is over the limits, one line each."""
    text = path.read_text()
    name = path.relative_to(ROOT)
    found = []
    if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def main() -> int:
    """Print every excess; non-zero if any."""
    found = [
        line
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).rglob("*.py"))
        for line in oversized(path)
    ]
    print("\n".join(found) or "sizes ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
