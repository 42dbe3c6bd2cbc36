"""/health and /metrics for a deployment of several replicas (chatd on Ray Serve).

Whichever replica a scrape reaches answers for the whole deployment: its own figures,
live, and the other replicas' as they last reported them (chatd.cluster.telemetry, at
most a couple of seconds old). So Prometheus scraping the one address sees every
replica's series every time, each labelled `replica`, instead of one replica's
counters after another's (which `rate()` would read as resets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

REPLICA_LABEL = "replica"


@dataclass(frozen=True)
class PeerReport:
    """Another replica's health body and metrics text, `age_s` seconds old."""

    replica: str
    age_s: float
    health: dict[str, Any]
    metrics: str


class Peers(Protocol):
    """This replica's view of the others (absent in a single process)."""

    replica: str

    def others(self) -> list[PeerReport]: ...


def merge_health(own_replica: str, own: dict[str, Any],
                 others: list[PeerReport]) -> dict[str, Any]:
    """The deployment's health: counters summed over the replicas, settings as this
    replica has them, and each replica's own body under `replicas`."""
    bodies = [own, *(p.health for p in others)]
    merged: dict[str, Any] = dict(own)
    for key, value in own.items():
        if _is_number(value):
            merged[key] = sum(b[key] for b in bodies if _is_number(b.get(key)))
    merged["status"] = "ok" if all(b.get("status") == "ok" for b in bodies) else "degraded"
    merged["replicas"] = [
        {REPLICA_LABEL: own_replica, "age_s": 0.0, **own},
        *({REPLICA_LABEL: p.replica, "age_s": round(p.age_s, 3), **p.health}
          for p in others)]
    return merged


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{?)")


def label_sample(line: str, replica: str) -> str:
    """One exposition sample line with `replica="..."` as its first label."""
    m = _SAMPLE.match(line)
    if m is None:
        return line
    label = f'{REPLICA_LABEL}="{_escape(replica)}"'
    name, brace = m.group(1), m.group(2)
    rest = line[m.end():]
    if brace:
        return f"{name}{{{label}{',' if not rest.startswith('}') else ''}{rest}"
    return f"{name}{{{label}}}{rest}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def merge_metrics(parts: list[tuple[str, str]]) -> str:
    """Prometheus text expositions of several replicas, `(replica, text)`, as one: each
    family's HELP and TYPE once, then its samples from every replica, labelled."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for replica, text in parts:
        current: tuple[list[str], list[str]] | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                fields = line.split(maxsplit=3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    current = families.setdefault(fields[2], ([], []))
                    if not any(m.split(maxsplit=2)[1] == fields[1] for m in current[0]):
                        current[0].append(line)
                continue
            if current is None:  # a sample before any HELP/TYPE: a family of its own
                current = families.setdefault(line.split("{")[0].split()[0], ([], []))
            current[1].append(label_sample(line, replica))
    out: list[str] = []
    for meta, samples in families.values():
        out += meta
        out += samples
    return "\n".join(out) + "\n"
