"""schemathesis against a running gateway: every check on, failures as readable lines.

The engine is the one `schemathesis run` drives (examples, coverage, fuzzing, then the stateful
phase along the document's links), called through its Python API so pytest runs it.
"""

import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import schemathesis
from schemathesis import engine
from schemathesis.engine import events
from schemathesis.schemas import BaseSchema

from tests.support.auth import PASSWORD

SEED = 20261203


# schemathesis' default for positive_data_acceptance, plus 412: an If-Match that names another
# version is refused by the task's state (declared, like the default's 404 and 409), not its form.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
# schemathesis' default for negative_data_rejection, plus 413: a generated body past the 64 KiB
# cap is refused (declared) before anything reads it.
REFUSED = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]
PHASES = ("examples", "coverage", "fuzzing", "stateful")


def contract_config(
    *, max_examples: int, phases: Iterable[str] = PHASES, base_url: str | None = None
) -> schemathesis.Config:
    """All checks, a fixed seed and derandomized generation, so a run can be repeated."""
    where = {"base-url": base_url} if base_url else {}
    return schemathesis.Config.from_dict(
        {
            **where,
            "seed": SEED,
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REFUSED},
            },
            "generation": {"max-examples": max_examples, "deterministic": True},
            "phases": {name: {"enabled": name in set(phases)} for name in PHASES},
            # The list cursor is an HMAC the server issues for one query: a generated one,
            # however well formed, is the declared 400, so only there 400 is no refusal of
            # valid data (GET /api/tasks has no other 400 a schema-valid request can get).
            "operations": [
                {
                    "include-name": "GET /api/tasks",
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}
                    },
                }
            ],
            # One worker: hypothesis parses lambdas with ast.parse, which CPython 3.11 does not
            # make thread-safe ("AST constructor recursion depth mismatch" with two).
            "workers": 1,
            "request-timeout": 15,
        }
    )


def fresh_user_auth(schema: BaseSchema, base_url: str) -> None:
    """Every token schemathesis sends belongs to a newly registered user.

    The run itself logs out, logs out everywhere and changes names: when a token stops working
    (401) schemathesis asks for a new one and replays, and a new account gets it.
    """

    class FreshUser:
        def get(self, case: Any, ctx: Any) -> str:
            response = httpx.post(
                f"{base_url}/api/auth/register",
                json={
                    "email": f"c{uuid.uuid4().hex[:12]}@example.com",
                    "password": PASSWORD,
                    "name": "Contract",
                },
                timeout=15,
            )
            response.raise_for_status()
            token: str = response.json()["access_token"]
            return token

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    schema.auth(refresh_interval=600, retry_on=[401])(FreshUser)


_KEY = re.compile(r"[!-~]{1,200}")
_hooked = False


def fresh_idempotency_keys() -> None:
    """Each request's valid Idempotency-Key is new, as its contract asks of a client.

    Generated keys repeat (derandomized), and a key reused for another body is the declared 422
    (IETF httpapi-idempotency-key-header); a malformed key stays as generated (the 400).
    schemathesis runs `before_call` hooks from its global dispatcher only, hence once per process.
    """
    global _hooked  # noqa: PLW0603 - one global hook per process
    if _hooked:
        return
    _hooked = True

    @schemathesis.hook
    def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
        headers = case.headers or {}
        for name, value in headers.items():
            if (
                name.lower() == "idempotency-key"
                and isinstance(value, str)
                and _KEY.fullmatch(value)
            ):
                headers[name] = uuid.uuid4().hex


@dataclass
class Outcome:
    """What one run found."""

    failures: list[str]
    errors: list[str]
    scenarios: Counter[str]  # finished scenarios by phase
    links: int  # links between operations the stateful phase had to follow

    def report(self) -> str:
        """The failures and errors, one block each, for an assertion message."""
        return "\n\n".join([*self.failures, *self.errors]) or "no failures"


def run(schema: BaseSchema) -> Outcome:
    """Run every configured phase; each distinct failure once (operation, kind, message)."""
    seen: dict[tuple[str, str, str], str] = {}
    outcome = Outcome([], [], Counter(), 0)
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.scenarios[event.phase.value] += 1
            for case_id, checks in event.recorder.checks.items():
                interaction = event.recorder.interactions.get(case_id)
                answer = interaction.response if interaction else None
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (failure.operation or event.recorder.label, failure.code, failure.title)
                    seen.setdefault(key, _describe(failure, check.failure_info.code_sample, answer))
        elif isinstance(event, events.PhaseStarted) and event.payload is not None:
            outcome.links = event.payload.transitions_selected
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"error in {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"fatal: {event.exception!r}")
    outcome.failures = list(seen.values())
    return outcome


def _describe(failure: Any, code_sample: str, answer: Any) -> str:
    got = f"  -> {answer.status_code} {answer.content[:300]!r}" if answer is not None else ""
    sample = code_sample.strip()
    if len(sample) > 800:  # a generated body can be 64 KiB
        sample = sample[:800] + "..."
    head = f"{failure.operation} {failure.code} {failure.title}"
    return f"{head}\n  {failure.message.strip()}\n  {sample}\n{got}"
