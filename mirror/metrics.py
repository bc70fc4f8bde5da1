"""Prometheus metrics of a mirror region, rendered from the region status document at scrape
time (mirror/status.py is the one owner of every figure: no second count kept on the side).

The read counters (`mirrorfs_region_<name>_total`, one family per name in
region_counters.COUNTER_NAMES) are the region's sums over every client process; the gauges are
the status document's numbers. A figure the document has as null (state `degraded`: the
replica's PostgreSQL does not answer) is left out, never reported as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mirror.region_counters import COUNTER_NAMES
from mirror.status import DEGRADED

PREFIX = "mirrorfs_region_"
_GAUGES = {
    "applied_version": "Last source version applied to the replica",
    "source_version": "Latest source version the follower knows",
    "lag_versions": "Versions the replica is behind the source",
    "lag_seconds": "Age of the last applied record, on the source's clock",
    "blocks_pending": "Blocks not yet copied into the mirror bucket (the backlog)",
    "bytes_pending": "Bytes not yet copied into the mirror bucket",
    "blocks_failed": "Blocks whose copy failed for good",
    "blocks_in_flight": "Blocks being copied now (claimed by a worker)",
    "blocks_retrying": "Pending blocks waiting out a backoff after a failed attempt",
    "oldest_pending_s": "Age of the oldest pending block",
    "records_per_s": "Changelog records applied per second (the apply rate)",
    "copy_blocks_per_s": "Blocks this daemon's replicator copied per second",
    "copy_bytes_per_s": "Bytes this daemon's replicator copied per second",
    "window_s": "The region's default consistency window",
    "source_clock_skew_ms": "Estimated source clock minus local clock (upper bound)",
}
_COUNTER_HELP = {
    "fallback_reads": "Blocks the region's readers read from the source bucket",
    "fallback_bytes": "Bytes the region's readers read from the source bucket",
    "mirror_hits": "Blocks the region's readers read from the mirror bucket",
    "mirror_bytes": "Bytes the region's readers read from the mirror bucket",
    "source_gets_saved": "Fallback reads served by another reader's source GET",
    "corrupt_repaired": "Mirror blocks that failed their checksum and were read from the source",
    "stale_waits": "Reads that waited for the replica to come within their window",
    "stale_served": "Reads answered by a stale replica (policy serve)",
    "stale_errors": "Reads refused as stale (policy error)",
    "stale_source": "Reads answered by the source because the replica was stale (policy source)",
    "cache_hits": "Blocks served by the readers' local block caches (no bucket asked)",
    "cache_hit_bytes": "Bytes served by the readers' local block caches",
    "cache_misses": "Blocks the readers' local block caches did not hold (asked of the region)",
    "cache_miss_bytes": "Bytes the readers' local block caches did not hold",
    "cache_corrupt": "Local block cache files that failed their checksum and were fetched again",
}


class StatusCollector(Collector):
    """The families of one status document (a fresh collector per scrape)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        doc = self.document
        labels = ["volume", "mirror"]
        who = [str(doc.get("volume", "")), str(doc.get("mirror", ""))]
        up = GaugeMetricFamily(
            f"{PREFIX}degraded", "1 while the replica cannot be read", labels=labels
        )
        up.add_metric(who, 1.0 if doc.get("state") == DEGRADED else 0.0)
        yield up
        paused = doc.get("paused")
        if isinstance(paused, bool):
            g = GaugeMetricFamily(
                f"{PREFIX}paused", "1 while block copies are paused", labels=labels
            )
            g.add_metric(who, float(paused))
            yield g
        for name, doc_help in _GAUGES.items():
            value = doc.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                g = GaugeMetricFamily(f"{PREFIX}{name}", doc_help, labels=labels)
                g.add_metric(who, float(value))
                yield g
        for family, key, doc_help in (
            ("failed_blocks_by_reason", "failed_reasons", "Blocks failed for good, by reason"),
            ("retrying_blocks_by_reason", "retrying_reasons", "Blocks in backoff, by reason"),
        ):
            reasons = doc.get(key)
            if isinstance(reasons, dict):
                g = GaugeMetricFamily(f"{PREFIX}{family}", doc_help, labels=[*labels, "reason"])
                for reason, count in sorted(reasons.items()):
                    g.add_metric([*who, str(reason)], float(count))
                yield g
        for name in COUNTER_NAMES:
            value = doc.get(name)
            if isinstance(value, int):
                c = CounterMetricFamily(
                    f"{PREFIX}{name}", _COUNTER_HELP.get(name, name), labels=labels
                )
                c.add_metric(who, float(value))
                yield c


def status_registry(document: Mapping[str, Any]) -> CollectorRegistry:
    """A registry holding the families of `document` (one per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(document))
    return registry


def render_metrics(document: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of `document`."""
    return bytes(generate_latest(status_registry(document)))


class WorkerCollector(Collector):
    """A `mirror worker` process's families: its replicator's state and what it copied since
    it started (the queue's counts are the region daemon's to report)."""

    def __init__(self, volume: str, mirror: str, status: Callable[[], Mapping[str, Any]]) -> None:
        self.who = [volume, mirror]
        self.status = status

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        labels = ["volume", "mirror", "worker"]
        who = [*self.who, str(st.get("worker_id", ""))]
        for name, kind, doc_help in (
            ("copy_bytes_per_s", GaugeMetricFamily, "Bytes this worker copied per second"),
            ("copy_blocks_per_s", GaugeMetricFamily, "Blocks this worker copied per second"),
            ("copy_concurrency", GaugeMetricFamily, "Copies this worker runs at once"),
            ("blocks_copied_since_start", CounterMetricFamily, "Blocks this worker copied"),
            ("copy_failures_since_start", CounterMetricFamily, "Copy attempts that failed"),
        ):
            value = st.get(name)
            if isinstance(value, int | float):
                family = kind(f"mirrorfs_worker_{name}", doc_help, labels=labels)
                family.add_metric(who, float(value))
                yield family
