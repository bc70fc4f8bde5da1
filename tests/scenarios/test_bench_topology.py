"""The filer.sync side of the benchmark works and cleans up: two `weed server -s3` clusters,
`filer.sync -isActivePassive` between them copies an object of the synced bucket (and only
that bucket), and stopping leaves no process and none of the clusters' unix sockets."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from botocore.exceptions import ClientError

from scenarios.bench_topology import FilerSync, WeedCluster, s3_client


def visible(client: object, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
        return True
    except ClientError:
        return False


def test_filer_sync_copies_the_synced_bucket_and_everything_is_stopped(tmp_path: Path) -> None:
    a, b = WeedCluster(tmp_path / "a"), WeedCluster(tmp_path / "b")
    sync = FilerSync(a, b, tmp_path, "synced")
    try:
        a.start()
        b.start()
        for bucket in ("synced", "other"):
            a.create_bucket(bucket)
        b.create_bucket("synced")
        sync.start()
        s3a, s3b = s3_client(a.endpoint), s3_client(b.endpoint)
        s3a.put_object(Bucket="synced", Key="k", Body=b"x" * 5000)  # type: ignore[attr-defined]
        s3a.put_object(Bucket="other", Key="k", Body=b"y")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 90  # filer.sync polls; a loaded machine starts it slowly
        while not visible(s3b, "synced", "k"):
            assert time.monotonic() < deadline, f"not synced in 90 s:\n{a.log_tail()}"
            time.sleep(0.05)
        body = s3b.get_object(Bucket="synced", Key="k")["Body"].read()  # type: ignore[attr-defined]
        assert body == b"x" * 5000
        assert not visible(s3b, "other", "k")  # -a.path: the other bucket is not synced
        pids = [p.pid for p in (a.proc, b.proc, sync.proc) if p is not None]
    finally:
        sync.stop()
        a.stop()
        b.stop()
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )
    assert [p for p in a.socket_paths() + b.socket_paths() if p.exists()] == []
