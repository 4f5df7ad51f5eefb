"""TaskbusClient: the REST API through the gateway, with silent refresh and ETag caching.

Creates carry an Idempotency-Key made per call, so a create answered 502/503/504 (or lost on the
wire) is retried with the same key: the service replays the first result instead of creating a
second task, even when the first attempt did create one before the answer was lost.
"""

import asyncio
import uuid
from types import TracebackType
from typing import Any, Self

import httpx

from client.auth import RefreshingAuth, TokenPair
from client.cache import ETagCacheTransport

_RETRYABLE = frozenset({502, 503, 504})
_MAX_PAUSE_S = 5.0


def _pause_s(response: httpx.Response | None, attempt: int) -> float:
    """Retry-After when the server gave one (capped), else exponential backoff."""
    header = str(response.headers.get("retry-after", "")) if response is not None else ""
    if header.isdigit():
        return min(float(header), _MAX_PAUSE_S)
    return min(0.1 * 2.0**attempt, _MAX_PAUSE_S)


class ApiError(Exception):
    """An RFC 9457 problem answered by the API."""

    def __init__(
        self, status: int, problem: dict[str, Any], response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem.get('title', ''))}")
        self.status = status
        self.problem = problem
        self.response = response


class TaskbusClient:
    """One user's session with a Taskbus gateway."""

    def __init__(
        self,
        base_url: str,
        *,
        tokens: TokenPair | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
    ) -> None:
        self._retries = retries
        self.auth = RefreshingAuth(tokens)
        self.cache = ETagCacheTransport(transport or httpx.AsyncHTTPTransport())
        self._http = httpx.AsyncClient(
            base_url=base_url, auth=self.auth, transport=self.cache, timeout=timeout_s
        )
        self._etags: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise ApiError(response.status_code, problem, response)
        return response

    async def _session(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = (await self._call("POST", path, json=body)).json()
        self.auth.tokens = TokenPair(data["access_token"], data["refresh_token"])
        return data

    async def register(self, email: str, password: str, name: str) -> dict[str, Any]:
        """Create an account and start its session."""
        return await self._session(
            "/api/auth/register", {"email": email, "password": password, "name": name}
        )

    async def login(self, email: str, password: str) -> dict[str, Any]:
        """Start a session."""
        return await self._session("/api/auth/login", {"email": email, "password": password})

    async def me(self) -> dict[str, Any]:
        """The signed-in user."""
        data: dict[str, Any] = (await self._call("GET", "/api/auth/me")).json()
        return data

    async def create_task(
        self, idempotency_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Create a task (fields as the API takes them: title, priority, due_at, tags...), once."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._remember(
            await self._retried("POST", "/api/tasks", json=fields, headers=headers)
        )

    async def _retried(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """`_call`, sent again on 502/503/504 and transport errors (safe: idempotent requests)."""
        for attempt in range(self._retries):
            response = None
            try:
                return await self._call(method, path, **kwargs)
            except ApiError as exc:
                if exc.status not in _RETRYABLE:
                    raise
                response = exc.response
            except httpx.TransportError:
                pass
            # Waiting out the server's Retry-After (or a backoff): a schedule, not a condition.
            await asyncio.sleep(_pause_s(response, attempt))
        return await self._call(method, path, **kwargs)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """One task (revalidated with its ETag when cached)."""
        return self._remember(await self._call("GET", f"/api/tasks/{task_id}"))

    async def list_tasks(self, **params: Any) -> dict[str, Any]:
        """A page of tasks: `items` and `next_cursor`."""
        data: dict[str, Any] = (await self._call("GET", "/api/tasks", params=params)).json()
        return data

    async def update_task(self, task_id: str, **changes: Any) -> dict[str, Any]:
        """Change a task, only if nobody changed it since this client last saw it (If-Match)."""
        headers = {"If-Match": self._etags[task_id]} if task_id in self._etags else {}
        path = f"/api/tasks/{task_id}"
        return self._remember(await self._call("PATCH", path, json=changes, headers=headers))

    async def delete_task(self, task_id: str) -> None:
        """Delete a task (If-Match as for updates)."""
        headers = {"If-Match": self._etags.pop(task_id)} if task_id in self._etags else {}
        await self._call("DELETE", f"/api/tasks/{task_id}", headers=headers)

    def _remember(self, response: httpx.Response) -> dict[str, Any]:
        data: dict[str, Any] = response.json()
        if "etag" in response.headers and "id" in data:
            self._etags[data["id"]] = response.headers["etag"]
        return data
