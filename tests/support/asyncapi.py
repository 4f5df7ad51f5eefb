"""Validating an AsyncAPI document with the official parser (@asyncapi/parser, run by node)."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "deploy" / "local" / "asyncapi" / "validate.mjs"
# Where deploy/local/install.sh put the parser (its cache dir, as install.sh chooses it).
PARSER_DIR = Path(os.environ.get("TASKBUS_CACHE", ROOT / "var")) / "asyncapi"
PARSE_TIMEOUT_S = 60


def parse_asyncapi(document: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The parser's verdict on `document`: valid, counts, errors and warnings (see validate.mjs)."""
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        raise FileNotFoundError(f"no AsyncAPI parser under {PARSER_DIR}: run `make install`")
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(document))
    done = subprocess.run(
        ["node", str(VALIDATOR), str(path), str(PARSER_DIR)],
        capture_output=True,
        text=True,
        timeout=PARSE_TIMEOUT_S,
        check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout:
        raise RuntimeError(f"the AsyncAPI parser did not run: {done.stderr}")
    verdict: dict[str, Any] = json.loads(done.stdout)
    assert (done.returncode == 0) == verdict["valid"], done.stderr
    return verdict
