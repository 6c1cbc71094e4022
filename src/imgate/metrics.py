"""Prometheus metrics of a node, in its own registry (nothing global).

The hot path keeps plain integers (in C); nothing there calls into Python per frame. Instead each part
of the node registers a *source*, a function returning a dict of its current numbers, and the numbers
are read when Prometheus scrapes ``GET /metrics``:

    metrics = Metrics()
    metrics.add_source(lambda: {"connections": table.count, "frames_in": table.frames_in, ...})

Keys a source may return (missing keys count as 0; values of all sources are summed):

========================  ====================================  =======
key                       exported as                           type
========================  ====================================  =======
connections               imgate_connections                    gauge
rooms                     imgate_rooms                          gauge
frames_in                 imgate_frames_in_total                counter
frames_out                imgate_frames_out_total               counter
bytes_in                  imgate_bytes_in_total                 counter
bytes_out                 imgate_bytes_out_total                counter
drops                     imgate_drops_total                    counter
slow_consumer_closes      imgate_slow_consumer_closes_total     counter
auth_failures             imgate_auth_failures_total            counter
protocol_errors           imgate_protocol_errors_total          counter
pushes                    imgate_pushes_total                   counter
api_auth_failures         imgate_api_auth_failures_total        counter
api_scope_denials         imgate_api_scope_denials_total        counter
key_conflicts             imgate_key_conflicts_total            counter
http_request_timeouts     imgate_http_request_timeouts_total    counter
handshake_timeouts        imgate_handshake_timeouts_total       counter
rate_limited              imgate_rate_limited_total             counter
ip_limit_refusals         imgate_ip_limit_refusals_total        counter
user_limit_refusals       imgate_user_limit_refusals_total      counter
close_notices_late        imgate_close_notices_late_total       counter
close_notices_dropped     imgate_close_notices_dropped_total    counter
im_unacked                imgate_im_unacked                     gauge
im_messages               imgate_im_messages_total              counter
im_duplicates             imgate_im_duplicates_total            counter
im_resent                 imgate_im_resent_total                counter
im_gave_up                imgate_im_gave_up_total               counter
im_errors                 imgate_im_errors_total                counter
im_rate_limited           imgate_im_rate_limited_total          counter
im_commits                imgate_im_commits_total               counter
im_store_writes           imgate_im_store_writes_total          counter
im_failed_batches         imgate_im_failed_batches_total        counter
upstream_in_flight        imgate_upstream_in_flight             gauge
upstream_requests         imgate_upstream_requests_total        counter
upstream_errors           imgate_upstream_errors_total          counter
upstream_busy             imgate_upstream_busy_total            counter
auth_requests             imgate_auth_requests_total            counter
auth_cache_hits           imgate_auth_cache_hits_total          counter
auth_unavailable          imgate_auth_unavailable_total         counter
webhook_queue             imgate_webhook_queue                  gauge
webhook_events            imgate_webhook_events_total           counter
webhook_dropped           imgate_webhook_dropped_total          counter
webhook_posts             imgate_webhook_posts_total            counter
webhook_retries           imgate_webhook_retries_total          counter
========================  ====================================  =======

HTTP requests are counted the same way: one plain count per (route, status) in ``Metrics.http_counts``,
which the HTTP server bumps itself when given the dict as its observer (:meth:`Metrics.observe_http`
does the same for callers that want a function), exported at scrape time as
``imgate_http_requests_total{route,status}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "COUNTERS", "GAUGES", "Metrics", "Source"]

log = logging.getLogger("imgate.metrics")

Source = Callable[[], Mapping[str, float]]

# The classic text format (every name here is a legacy name, so every Prometheus version reads it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GAUGES: dict[str, str] = {
    "connections": "Client connections currently open on this node.",
    "rooms": "Rooms with at least one member on this node.",
    "upstream_in_flight": "Client messages waiting for the upstream service.",
    "webhook_queue": "Connection events waiting to be sent to the webhook.",
    "im_unacked": "IM entries pushed to open connections and not acked yet.",
}
COUNTERS: dict[str, str] = {
    "frames_in": "goim frames received from clients.",
    "frames_out": "goim frames sent to clients.",
    "bytes_in": "Bytes received from clients.",
    "bytes_out": "Bytes sent to clients.",
    "drops": "Frames dropped (connection gone or over its output bound).",
    "slow_consumer_closes": "Connections closed because they did not read their output.",
    "auth_failures": "Auth frames (op 7) refused.",
    "protocol_errors": "Connections closed for a protocol error.",
    "pushes": "Push requests handled (keys, mids, room, all).",
    "upstream_requests": "Client messages sent to the upstream service.",
    "upstream_errors": "Client messages answered with an error body (timeout, unavailable, status, too large).",
    "upstream_busy": "Client messages refused at once because a concurrency bound was reached.",
    "auth_requests": "Requests to the auth service (auth = http).",
    "auth_cache_hits": "Auths answered from the per-token cache (auth = http).",
    "auth_unavailable": "Auths that found the auth service unavailable (auth = http).",
    "webhook_events": "Connection events queued for the webhook.",
    "webhook_dropped": "Connection events dropped because the webhook queue was full.",
    "webhook_posts": "Webhook POSTs made, retries included.",
    "webhook_retries": "Webhook POSTs that failed and were retried.",
    "api_auth_failures": "HTTP API requests refused 401 (no credential, or an unknown, revoked or expired one).",
    "api_scope_denials": "HTTP API requests refused 403 (the credential lacks the route's scope).",
    "key_conflicts": "Auth frames refused because another user's live connection holds the key.",
    "http_request_timeouts": "HTTP requests answered 408: head and body not received within http_request_timeout.",
    "rate_limited": "Connections closed for sending frames faster than client_op_rate (past client_op_burst).",
    "ip_limit_refusals": "Connections refused: their address already had max_conns_per_ip open.",
    "user_limit_refusals": "Auths refused: their user already had max_conns_per_user connections open.",
    "close_notices_late": "op-6 notices that waited for a full socket to drain before going out (then FIN).",
    "close_notices_dropped": "op-6 notices never delivered: the peer made no room for them before the close deadline.",
    "handshake_timeouts": "Connections closed because the WebSocket upgrade and auth did not finish within handshake_timeout.",
    "im_messages": "IM messages stored (a resend of a stored cmid is not counted).",
    "im_duplicates": "IM sends answered from an earlier send with the same cmid.",
    "im_resent": "IM entries pushed again because they were not acked in time.",
    "im_gave_up": "IM entries no longer resent (retries used up, or over the per-connection bound).",
    "im_errors": "IM requests answered with an error.",
    "im_rate_limited": "IM sends and reads refused 429: their user passed im_user_rate (past im_user_burst).",
    "im_commits": "Transactions committed by the message store's writer.",
    "im_store_writes": "Writes committed by the message store (im_store_writes / im_commits: the batch size).",
    "im_failed_batches": "Message store transactions that failed; their writes were refused.",
}


class _SourceCollector(Collector):
    """Reads the registered sources at scrape time and sums them per key."""

    def __init__(self, metrics: "Metrics") -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Declaring the names lets the registry refuse clashes, without reading the sources.
        for key, doc in GAUGES.items():
            yield GaugeMetricFamily(f"imgate_{key}", doc)
        for key, doc in COUNTERS.items():
            yield CounterMetricFamily(f"imgate_{key}", doc)

    def collect(self) -> Iterator[Metric]:
        totals = self._metrics.snapshot()
        for key, doc in GAUGES.items():
            yield GaugeMetricFamily(f"imgate_{key}", doc, value=totals.get(key, 0))
        for key, doc in COUNTERS.items():
            yield CounterMetricFamily(f"imgate_{key}", doc, value=totals.get(key, 0))


class _HttpCollector(Collector):
    """``imgate_http_requests_total{route,status}`` from the counts kept by :meth:`Metrics.observe_http`."""

    def __init__(self, counts: dict[tuple[str, int], int]) -> None:
        self._counts = counts

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("imgate_http_requests", _HTTP_DOC, labels=["route", "status"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("imgate_http_requests", _HTTP_DOC, labels=["route", "status"])
        for (route, status), n in sorted(self._counts.items()):
            family.add_metric([route, str(status)], n)
        yield family


_HTTP_DOC = "HTTP API requests answered, by route and status."


class Metrics:
    """A node's metrics: scrape-time sources plus the HTTP request counter, in a private registry."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources: list[Source] = []
        self.registry.register(_SourceCollector(self))
        # (route, status) -> requests answered; a prometheus Counter child per request would cost
        # more than the rest of a push's HTTP handling (a lock and two calls per increment)
        self.http_counts: dict[tuple[str, int], int] = {}
        self.registry.register(_HttpCollector(self.http_counts))
        if process:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)

    # -- sources

    def add_source(self, fn: Source) -> Source:
        """Register ``fn() -> dict``; returns ``fn`` (so it works as a decorator)."""
        self._sources.append(fn)
        return fn

    def remove_source(self, fn: Source) -> None:
        try:
            self._sources.remove(fn)
        except ValueError:
            pass

    def snapshot(self) -> dict[str, float]:
        """The summed numbers of every source now; a failing source is logged and left out."""
        totals: dict[str, float] = {}
        for fn in list(self._sources):
            try:
                values = fn()
            except Exception:
                log.exception("metrics source %r failed", fn)
                continue
            if not values:
                continue
            for key, value in values.items():
                if key in GAUGES or key in COUNTERS:
                    totals[key] = totals.get(key, 0) + value
        return totals

    # -- HTTP

    def observe_http(self, route: str, status: int) -> None:
        """Count one answered HTTP request (the HTTP server's observer)."""
        key = (route, status)
        counts = self.http_counts
        counts[key] = counts.get(key, 0) + 1

    # -- exposition

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE
