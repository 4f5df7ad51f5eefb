"""Issue 12 item 7: the gateway's /metrics is served only where the scraper reaches.

Before: `GET /metrics` on the public port answered every caller with the process's metrics and
none of the security headers. Now the public port answers 404 problem+json with the security
headers, and the metrics are served on GATEWAY_METRICS_PORT (a listener of its own).
"""

import uuid

from prometheus_client.parser import text_string_to_metric_families

from gateway.headers import DEFAULT_CSP, HELMET_HEADERS
from tests.support.gateway import gateway_client, gateway_settings, metrics_url
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey


async def test_metrics_are_not_on_the_public_port_and_are_on_their_own() -> None:
    key = SigningKey.generate()
    upstream = await EchoUpstream("tasks").start()
    settings = gateway_settings(f"gwm{uuid.uuid4().hex[:10]}", key, upstream.url)
    token, _ = key.mint("u1")
    try:
        async with gateway_client(settings) as client:
            served = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
            assert served.status_code == 200

            public = await client.get("/metrics")
            assert public.status_code == 404
            assert public.headers["content-type"] == "application/problem+json"
            assert "taskbus_" not in public.text
            assert public.headers["content-security-policy"] == DEFAULT_CSP
            for name, value in HELMET_HEADERS:
                assert public.headers[name.decode()] == value.decode(), name

            scraped = await client.get(metrics_url(settings))
            assert scraped.status_code == 200
            names = {family.name for family in text_string_to_metric_families(scraped.text)}
            assert {"taskbus_http_requests", "taskbus_gateway_cache"} <= names
            wanted = (
                'taskbus_http_requests_total{method="GET",route="/api/tasks*",service="gateway"'
            )
            assert wanted in scraped.text
    finally:
        await upstream.stop()
