"""What an operator watches on a running API: Prometheus metrics at ``GET /metrics``.

Requests by route template (``/users/{user_id}/recommendations``, never the filled-in path, whose
user ids would make a series per user), method and status, so errors are the 4xx/5xx series, and
their latency by route and method; the ratings and movies written; whether the ratings store is
being left alone after a failure; and
which model serves (its package version, run and backend as labels of a constant 1). Each app
keeps its own registry: tests and a process serving two apps never share counters.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds: in-process recommendations take ~0.4 ms, a loopback HTTP answer a few; the top buckets
# catch a PostgreSQL store waiting for a connection (POOL_WAIT: 3 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED = "unmatched"  # the route label of a request no route took: unknown paths, and the guards' refusals
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as "other":
# a client may send any token as its method, and each would make series of its own


class ServingMetrics:
    """The API's Prometheus series, in a registry of their own."""

    def __init__(self, model: dict[str, str], store: bool):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("movierec_requests", "HTTP requests answered, by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("movierec_request_seconds", "Time from a request's arrival to its answer's end",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ratings = Counter("movierec_ratings_written", "Ratings POST /ratings stored (new or corrected)",
                               registry=self.registry)
        self.movies = Counter("movierec_movies_added", "Movies POST /movies added to the loaded model",
                              registry=self.registry)
        # Only a server with a store has one to report on: 0 while its circuit breaker keeps calls away
        # after a failure (StoreBreaker), 1 otherwise (an outage shows from the first failed call).
        self.store_up = Gauge("movierec_store_up", "0 while the ratings store is left alone after a failed call, "
                              "else 1", registry=self.registry) if store else None
        info = Gauge("movierec_model_info", "The served model: package version, training run and rating backend",
                     sorted(model), registry=self.registry)
        info.labels(**model).set(1)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """(what a scrape sending ``accept`` reads, its content type): the Prometheus text format,
        or OpenMetrics where the scraper asks for it, as prometheus_client's own endpoints choose."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request and timing it to the end of its answer. The
    route label is the template of the route that took the request, read from the scope after the
    app ran (Starlette's router puts it there); refusals by the guards outside the router, and
    unknown paths, count as ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # an app that raises answers 500 (ServerErrorMiddleware)

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
