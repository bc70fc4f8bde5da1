"""The effect contract exists once (volume/effects.py): one table of op -> steps, two sinks.

The source's tables (replay) and the mirror's batch fold (SQL) take the same recorded
changelog to the same namespace; the table covers every op the source plans, and only those.
"""

from __future__ import annotations

import random

import pytest

from changelog.namespace import OPS, Namespace
from mirror.audit import check_integrity, dump_tree
from mirror.db import Database
from mirror.follow import apply_records
from tests.mirror.conftest import Workload, batches
from volume.effects import EFFECTS, MalformedEffectError, apply_effect
from volume.records import MIRROR_OPS, MIRROR_REMOVE, TICK


def test_the_table_covers_every_op_the_source_can_record() -> None:
    assert set(EFFECTS) == {*OPS, TICK, *MIRROR_OPS}


def test_an_unknown_or_malformed_effect_is_refused_by_name() -> None:
    with pytest.raises(MalformedEffectError, match="unknown op 'format_disk'"):
        apply_effect(Namespace().tables, "format_disk", {})
    with pytest.raises(MalformedEffectError, match="malformed mkdir effect"):
        apply_effect(Namespace().tables, "mkdir", {"ino": 5})


@pytest.mark.parametrize("seed", [21, 22])
async def test_replay_and_fold_of_one_changelog_agree(seed: int, db: Database) -> None:
    w = Workload(seed).run(1200)
    w.emit(MIRROR_REMOVE, {"name": "m1"})
    expired = w.apply("expire_slices", {"before_ts": w.ts, "forget": []})  # the upload sweeper's
    assert expired is not None and expired["expired"], "the workload left uncommitted ids"
    assert {r.op for r in w.records} == set(EFFECTS), "the workload exercises every entry"
    replayed = Namespace()
    for record in w.records:
        replayed.replay(record.op, record.effect)
    for batch in batches(w.records, random.Random(seed), 250):
        await apply_records(db, batch)
    source = w.ns.dump_tree()
    assert replayed.dump_tree() == source
    assert await dump_tree(db) == source
    assert await check_integrity(db) == []
