"""The object-store contract runs on every backend: a local directory and real S3 (SeaweedFS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from objstore import ObjectStore, open_store


@pytest.fixture(params=["file", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "file":
        url = (tmp_path / "bucket").as_uri()
    else:
        url = request.getfixturevalue("s3_url")
    s = await open_store(url, registry=CollectorRegistry())
    yield s
    await s.aclose()
