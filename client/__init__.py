"""Python client for the Taskbus REST API: silent token refresh, ETag revalidation."""

from client.api import ApiError, TaskbusClient
from client.auth import RefreshingAuth, TokenPair

__all__ = ["ApiError", "RefreshingAuth", "TaskbusClient", "TokenPair"]
