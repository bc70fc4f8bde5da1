"""Prometheus metrics of a mirror region, rendered from the region status document at scrape
time (mirror/status.py is the one owner of every figure: no second count kept on the side).

The read counters (`mirrorfs_region_<name>_total`, one family per name in
region_counters.COUNTER_NAMES) are the region's sums over every client process; the gauges are
the status document's numbers. A figure the document has as null (state `degraded`: the
replica's PostgreSQL does not answer) is left out, never reported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
}


class StatusCollector(Collector):
    """The families of one status document (a fresh collector per scrape)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        doc = self.document
        mirror = str(doc.get("mirror", ""))
        up = GaugeMetricFamily(
            f"{PREFIX}degraded", "1 while the replica cannot be read", labels=["mirror"]
        )
        up.add_metric([mirror], 1.0 if doc.get("state") == DEGRADED else 0.0)
        yield up
        for name, doc_help in _GAUGES.items():
            value = doc.get(name)
            if isinstance(value, int | float):
                g = GaugeMetricFamily(f"{PREFIX}{name}", doc_help, labels=["mirror"])
                g.add_metric([mirror], float(value))
                yield g
        for name in COUNTER_NAMES:
            value = doc.get(name)
            if isinstance(value, int):
                c = CounterMetricFamily(
                    f"{PREFIX}{name}", _COUNTER_HELP.get(name, name), labels=["mirror"]
                )
                c.add_metric([mirror], float(value))
                yield c


def render_metrics(document: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of `document`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(document))
    return bytes(generate_latest(registry))
