"""The Grafana dashboard in the repo asks only for metric families the daemons export."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_query_names_a_documented_family() -> None:
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    readme = (ROOT / "README.md").read_text()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"\b(mirrorfs_[a-z_]+)", expr):
            family = name.removesuffix("_total")
            assert f"`{family}`" in readme, f"{expr}: {family} is not a documented family"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
