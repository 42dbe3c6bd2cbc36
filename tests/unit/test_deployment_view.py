"""/health and /metrics answering for a deployment of several replicas: the merge of
each replica's own report (chatd.api.deployment)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatd.api.deployment import PeerReport, label_sample, merge_health, merge_metrics
from chatd.api.metrics import Metrics


def _replica_metrics(running: int, completion_tokens: int, ttft: float) -> str:
    m = Metrics(lambda: {"running_sequences": running, "kv_cells_total": 1024},
                lambda: (0, running))
    m.completion_tokens.inc(completion_tokens)
    m.ttft.observe(ttft)
    m.requests.labels(route="/v1/chat/completions", method="POST", status="200").inc()
    return m.render().decode()


def test_merged_metrics_parse_and_keep_every_replicas_series() -> None:
    merged = merge_metrics([("r-a", _replica_metrics(3, 40, 0.2)),
                            ("r-b", _replica_metrics(5, 7, 3.0))])
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    # Each family once (a repeated HELP/TYPE would make Prometheus reject the scrape).
    for kind in ("HELP", "TYPE"):
        names = [line.split()[2] for line in merged.splitlines()
                 if line.startswith(f"# {kind} ")]
        assert len(names) == len(set(names))
    running = {s.labels["replica"]: s.value for s in families["chatd_running_sequences"].samples}
    assert running == {"r-a": 3, "r-b": 5}
    tokens = {s.labels["replica"]: s.value
              for s in families["chatd_completion_tokens"].samples}
    assert tokens == {"r-a": 40, "r-b": 7}
    # Histograms keep their buckets per replica; the label goes beside `le`.
    buckets = [s for s in families["chatd_time_to_first_token_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["le"] == "0.25"]
    assert {s.labels["replica"]: s.value for s in buckets} == {"r-a": 1, "r-b": 0}
    requests = families["chatd_http_requests"].samples
    assert {(s.labels["replica"], s.labels["route"]) for s in requests} == {
        ("r-a", "/v1/chat/completions"), ("r-b", "/v1/chat/completions")}


def test_label_sample_escapes_and_handles_bare_names() -> None:
    assert label_sample("up 1", "x") == 'up{replica="x"} 1'
    assert label_sample('h_bucket{le="0.5"} 2', 'a"b') == 'h_bucket{replica="a\\"b",le="0.5"} 2'
    assert label_sample("e{} 0", "x") == 'e{replica="x"} 0'


def test_merged_health_sums_counters_and_lists_replicas() -> None:
    own = {"status": "ok", "model": "m", "kv_layout": "split", "deterministic": False,
           "running_sequences": 2, "tokens_generated": 100, "engine_decode_seconds": 1.5}
    other = {**own, "running_sequences": 1, "tokens_generated": 50,
             "engine_decode_seconds": 0.5}
    body = merge_health("r-a", own, [PeerReport("r-b", 1.25, other, "")])
    assert body["status"] == "ok"
    assert body["running_sequences"] == 3 and body["tokens_generated"] == 150
    assert body["engine_decode_seconds"] == 2.0
    assert body["model"] == "m" and body["deterministic"] is False
    assert [(r["replica"], r["age_s"], r["tokens_generated"]) for r in body["replicas"]] == [
        ("r-a", 0.0, 100), ("r-b", 1.25, 50)]


def test_a_replica_whose_engine_stopped_makes_the_deployment_degraded() -> None:
    own = {"status": "ok", "running_sequences": 2}
    body = merge_health("r-a", own, [PeerReport("r-b", 0.5, {"status": "stopped"}, "")])
    assert body["status"] == "degraded" and body["running_sequences"] == 2
    assert [r["status"] for r in body["replicas"]] == ["ok", "stopped"]


def test_board_returns_the_others_and_forgets_the_silent(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    telemetry = pytest.importorskip("chatd.cluster.telemetry")
    now = [100.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    board = telemetry.Board()
    assert board.post("r-a", {"status": "ok"}, "a 1\n") == []
    now[0] += 1.0
    assert board.post("r-b", {"status": "ok"}, "b 1\n") == [("r-a", 1.0, {"status": "ok"},
                                                             "a 1\n")]
    now[0] += telemetry.EXPIRE_S  # r-a stopped reporting (it died); r-b goes on
    assert board.post("r-b", {"status": "ok"}, "b 2\n") == []
    assert set(board.reports) == {"r-b"}
