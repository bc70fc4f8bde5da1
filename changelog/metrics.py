"""Prometheus metrics of a source node, read from live state at scrape time (never counters
kept on the side that drift after a restart)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from changelog.node import SourceNode


class NodeCollector(Collector):
    def __init__(self, node: SourceNode) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self.node.status()
        node = str(self.node.node_id)
        volume = self.node.cfg.name

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"mirrorfs_source_{name}", doc, labels=["volume", "node"])
            g.add_metric([volume, node], value)
            return g

        yield gauge("applied_version", "Last changelog version applied here", st["applied_version"])
        yield gauge("head_ts_ms", "Source timestamp (ms) of the last applied record", st["head_ts"])
        yield gauge("is_leader", "1 if this node is the Raft leader", st["role"] == "leader")
        yield gauge("term", "Raft term", st["term"])
        yield gauge("first_available_version", "Lowest version still served", st["first_available"])
        yield gauge("mirrors", "Registered mirror regions", len(st["mirrors"]))
        acked = GaugeMetricFamily(
            "mirrorfs_source_mirror_acked_version",
            "Version a mirror acked",
            labels=["volume", "node", "mirror"],
        )
        for name, m in st["mirrors"].items():
            acked.add_metric([volume, node, name], m["acked"])
        yield acked
