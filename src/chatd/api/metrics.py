"""Prometheus metrics (``prometheus-client``), served at ``GET /metrics``.

Each app has its own registry, so several servers in one process (tests) never share
or double-register series. Request-level metrics are observed as requests happen;
engine and queue gauges are read from their owners at scrape time by a collector,
so they can never drift from the real state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _LiveGauges(Collector):
    """Engine and admission-queue state, read at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, int | float]],
                 queue: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats
        self._queue = queue

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        depth, in_flight = self._queue()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("chatd_queue_depth", "Requests waiting in the admission queue.", depth)
        yield gauge("chatd_admitted_sequences",
                    "Sequences admitted past the queue (running or about to).", in_flight)
        yield gauge("chatd_engine_waiting_requests",
                    "Requests queued inside the engine (waiting for KV cells or a slot).",
                    stats.get("waiting_requests", 0))
        yield gauge("chatd_running_sequences", "Sequences the engine is decoding.",
                    stats.get("running_sequences", 0))
        total = stats.get("kv_cells_total", 0)
        running = stats.get("kv_cells_running", 0)
        cached = stats.get("kv_cells_cached", 0)
        yield gauge("chatd_kv_cells_total", "Size of the KV cache in cells (tokens).", total)
        yield gauge("chatd_kv_cells_running", "KV cells held by running sequences.", running)
        yield gauge("chatd_kv_cells_cached", "KV cells kept as the prefix cache.", cached)
        yield gauge("chatd_kv_cache_usage_ratio",
                    "Fraction of KV cells in use (running + prefix cache).",
                    (running + cached) / total if total else 0.0)
        yield gauge("chatd_kv_cells_allocated",
                    "KV cells up to the allocation cursor, live or garbage: what attention "
                    "scans every step (with a stream per sequence: the cells the streams "
                    "hold).", stats.get("kv_cells_allocated", 0))
        yield gauge("chatd_kv_cells_parked",
                    "Cells of prefix-cache entries parked in host memory (out of the KV "
                    "cache, so attention does not scan them).", stats.get("kv_cells_parked", 0))
        yield CounterMetricFamily("chatd_kv_parked_hits",
                                  "Parked prefix-cache entries restored for a new request.",
                                  value=stats.get("kv_unparks", 0))
        yield CounterMetricFamily("chatd_kv_repacks",
                                  "Times live KV cells were moved down to reclaim garbage "
                                  "while sequences ran.", value=stats.get("kv_repacks", 0))
        yield CounterMetricFamily("chatd_prefix_cache_hit_tokens",
                                  "Prompt tokens reused from the prefix cache.",
                                  value=stats.get("prefix_cache_hit_tokens", 0))
        yield CounterMetricFamily("chatd_prefix_cache_copied_tokens",
                                  "Prompt tokens copied from another sequence's KV stream "
                                  "(--kv-layout split: reused prefixes, n > 1 forks) "
                                  "rather than shared.",
                                  value=stats.get("prefix_cache_copied_tokens", 0))
        yield CounterMetricFamily("chatd_engine_steps", "Engine steps (llama_decode calls).",
                                  value=stats.get("steps", 0))
        yield CounterMetricFamily("chatd_engine_decode_seconds",
                                  "Engine thread time inside llama_decode.",
                                  value=stats.get("engine_decode_seconds", 0.0))
        yield CounterMetricFamily("chatd_engine_host_seconds",
                                  "Engine thread time in steps outside llama_decode "
                                  "(planning, sampling, handing tokens over).",
                                  value=stats.get("engine_host_seconds", 0.0))
        yield CounterMetricFamily("chatd_dense_prefill_tokens",
                                  "Prompt tokens computed through the dense copy of the "
                                  "weights (--dense-prefill).",
                                  value=stats.get("dense_prefill_tokens", 0))
        yield CounterMetricFamily("chatd_dense_prefill_seconds",
                                  "Engine thread time computing prompts through the dense "
                                  "copy, moving their cells included.",
                                  value=stats.get("dense_prefill_seconds", 0.0))
        yield CounterMetricFamily("chatd_dense_decode_steps",
                                  "Engine steps decoded through the dense copy of the "
                                  "weights (--dense-decode).",
                                  value=stats.get("dense_decode_steps", 0))
        yield CounterMetricFamily("chatd_weights_switches",
                                  "Moves of the KV cache between the file's weights and "
                                  "the dense copy (--dense-decode).",
                                  value=stats.get("weights_switches", 0))
        yield CounterMetricFamily("chatd_weights_switch_seconds",
                                  "Engine thread time moving the KV cache between the "
                                  "file's weights and the dense copy.",
                                  value=stats.get("weights_switch_seconds", 0.0))


class Metrics:
    def __init__(self, stats: Callable[[], dict[str, int | float]],
                 queue: Callable[[], tuple[int, int]]) -> None:
        disable_created_metrics()  # the *_created series only add noise here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("chatd_http_requests", "HTTP requests by route and status.",
                                ["route", "method", "status"], registry=r)
        self.http_duration = Histogram(
            "chatd_http_request_duration_seconds",
            "Time from request arrival to the last byte of the response.",
            ["route"], buckets=HTTP_BUCKETS, registry=r)
        self.ttft = Histogram("chatd_time_to_first_token_seconds",
                              "Time from request arrival to the first generated token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("chatd_inter_token_latency_seconds",
                             "Time between consecutive tokens of one choice.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("chatd_e2e_request_latency_seconds",
                             "Time from request arrival to the last generated token.",
                             buckets=E2E_BUCKETS, registry=r)
        self.queue_wait = Histogram("chatd_queue_wait_seconds",
                                    "Time requests waited in the admission queue.",
                                    buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("chatd_prompt_tokens", "Prompt tokens processed.",
                                     registry=r)
        self.completion_tokens = Counter("chatd_completion_tokens",
                                         "Completion tokens generated.", registry=r)
        self.rate_limited = Counter("chatd_rate_limit_rejections",
                                    "Requests refused with 429 by a per-key limit.",
                                    ["limit"], registry=r)
        self.overloaded = Counter("chatd_admission_rejections",
                                  "Requests refused with 503 by the admission queue.",
                                  ["reason"], registry=r)
        r.register(_LiveGauges(stats, queue))

    def render(self) -> bytes:
        return generate_latest(self.registry)
