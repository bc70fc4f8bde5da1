"""Retry, metrics and fault layers over real backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from objstore import NotFoundError, RateLimitedError, StoreError, UnavailableError, open_store
from objstore.faults import FaultLayer, FaultPlan
from objstore.local import LocalStore
from objstore.metrics import MetricsLayer
from objstore.retry import RetryLayer
from tests.servers.faultproxy import FaultProxy


def fast_retry(inner: FaultLayer | LocalStore, attempts: int = 6) -> RetryLayer:
    return RetryLayer(inner, max_attempts=attempts, base_wait_s=0.001, max_wait_s=0.01)


async def test_retry_survives_a_run_of_temporary_errors(tmp_path: Path) -> None:
    plan = FaultPlan()
    plan.fail("put", RateLimitedError("slow down"), UnavailableError("503"))
    plan.fail("get", RateLimitedError("slow down"), RateLimitedError("slow down"))
    store = fast_retry(FaultLayer(LocalStore(tmp_path), plan))
    await store.put("k", b"v")
    assert await store.get("k") == b"v"
    assert plan.calls == {"put": 3, "get": 3}
    assert store.retries == 4


async def test_retry_gives_up_after_max_attempts(tmp_path: Path) -> None:
    plan = FaultPlan()
    plan.fail("get", *(UnavailableError("down") for _ in range(10)))
    store = fast_retry(FaultLayer(LocalStore(tmp_path), plan), attempts=3)
    with pytest.raises(UnavailableError):
        await store.get("k")
    assert plan.calls["get"] == 3


async def test_not_found_and_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    plan = FaultPlan()
    plan.fail("put", StoreError("403 AccessDenied"))
    store = fast_retry(FaultLayer(LocalStore(tmp_path), plan))
    with pytest.raises(NotFoundError):
        await store.get("missing")
    with pytest.raises(StoreError, match="AccessDenied"):
        await store.put("k", b"v")
    assert plan.calls == {"get": 1, "put": 1}
    assert store.retries == 0


async def test_retried_list_resumes_after_the_last_key(tmp_path: Path) -> None:
    local = LocalStore(tmp_path)
    for i in range(5):
        await local.put(f"k{i}", b"")

    class FlakyList(FaultLayer):
        failed = False

        async def list(self, prefix: str = "", *, start_after: str = ""):  # type: ignore[no-untyped-def]
            async for meta in self.inner.list(prefix, start_after=start_after):
                yield meta
                if meta.key == "k2" and not self.failed:
                    self.failed = True
                    raise UnavailableError("connection reset")

    store = fast_retry(FlakyList(local))
    assert [m.key async for m in store.list()] == [f"k{i}" for i in range(5)]


async def test_metrics_count_calls_and_bytes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = MetricsLayer(LocalStore(tmp_path), name="t", registry=registry)
    await store.put("k", b"12345")
    await store.get("k")
    with pytest.raises(NotFoundError):
        await store.get("missing")

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, {"store": "t", **labels})
        return got or 0.0

    assert value("mirrorfs_objstore_requests_total", op="get", outcome="ok") == 1
    assert value("mirrorfs_objstore_requests_total", op="get", outcome="not_found") == 1
    assert value("mirrorfs_objstore_bytes_total", op="put") == 5
    assert value("mirrorfs_objstore_bytes_total", op="get") == 5


async def test_s3_throttling_and_5xx_through_a_proxy_are_survived(
    seaweed: object, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    url = f"s3://{s3_bucket}?endpoint={fault_proxy.url}"
    store = await open_store(url, registry=CollectorRegistry())
    try:
        await store.put("warm", b"x")
        fault_proxy.fail_next(3, status=503, code="SlowDown")
        await store.put("k", b"value")
        fault_proxy.fail_next(2, status=500, code="InternalError")
        assert await store.get("k") == b"value"
        fault_proxy.drop_next(1)
        assert (await store.head("k")).size == 5
        assert fault_proxy.stats().faults_injected >= 6
    finally:
        await store.aclose()


async def test_s3_not_found_is_not_retried(
    seaweed: object, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    url = f"s3://{s3_bucket}?endpoint={fault_proxy.url}"
    store = await open_store(url, registry=CollectorRegistry())
    try:
        before = fault_proxy.stats().requests_seen
        with pytest.raises(NotFoundError):
            await store.get("missing")
        assert fault_proxy.stats().requests_seen == before + 1
    finally:
        await store.aclose()
