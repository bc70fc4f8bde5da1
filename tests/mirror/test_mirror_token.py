"""A mirror region follows with its own `mirror:NAME` token, minted and recorded by `create`.

To show the daemon needs nothing else, the admin token in the config file is replaced after
`create` (the running source nodes keep the real one): a daemon that still used the admin token
for the source API would get 401 and never apply a record.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from volume.config import load_config
from volume.tokens import mint_token, token_key


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        yield cluster


async def status_code(api: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.get(f"{api}/v1/status") as resp,
    ):
        return resp.status


async def test_a_mirror_follows_with_its_own_minted_token(
    source: SourceCluster, pg_dsn: str
) -> None:
    region = MirrorRegion(source, "eu", pg_dsn)
    try:
        await make_files(source, "before", 20)
        await region.create()
        path = source.config_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        cfg = load_config(path)
        own = cfg.mirrors["eu"].token
        assert own.startswith("mfs1.mirror:eu.")
        assert cfg.token_verifier().scope_of(own) == "mirror:eu"
        assert cfg.mirror_region("eu").token == own

        other_admin = "another-admin-token-0000000000"
        path.write_text(
            path.read_text().replace(f'token = "{cfg.token}"', f'token = "{other_admin}"')
        )
        assert load_config(path).token == other_admin

        region.start()
        version = await make_files(source, "after", 20)
        await region.assert_equal_to_source()
        deadline = time.monotonic() + 30
        while True:  # its acks, made with its own token, are accepted by the source
            async with source.client() as c:
                acked = (await c.status(source.api(1)))["mirrors"]["eu"]["acked"]
            if acked >= version:
                break
            assert time.monotonic() < deadline, region.log_path.read_text()[-3000:]
            await asyncio.sleep(0.2)
        assert "bearer token" not in region.log_path.read_text()

        key = token_key(cfg.secret)
        api = region.api
        assert await status_code(api, own) == 200
        assert await status_code(api, other_admin) == 200  # the admin token of the file it read
        assert await status_code(api, mint_token(key, "admin")) == 200
        assert await status_code(api, mint_token(key, "mirror:ap")) == 403
        assert await status_code(api, mint_token(key, "client:ro")) == 403
        assert await status_code(api, None) == 401
        assert await status_code(api, "mfs1.admin.00.forged") == 401
        assert "mirror.forbidden" in region.log_path.read_text()
    finally:
        region.kill()
