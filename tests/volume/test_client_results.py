"""A failed request's answer: the op that failed is the error raised, not a skipped one."""

from __future__ import annotations

import errno

import pytest

from volume.client import OpsResult
from volume.errors import FsError


def test_raise_first_error_raises_the_op_that_failed() -> None:
    skipped = FsError(errno.ECANCELED, "not applied: op 2 of this request failed").to_wire()
    cause = FsError(errno.EINVAL, "slice 9 is not allocated", path="/f").to_wire()
    res = OpsResult(
        "id",
        [
            {"ok": False, "not_applied": True, "error": skipped},
            {"ok": False, "not_applied": True, "error": skipped},
            {"ok": False, "error": cause},
        ],
        0,
    )
    with pytest.raises(FsError) as info:
        res.raise_first_error()
    assert info.value.errno == errno.EINVAL and info.value.path == "/f"
    OpsResult("id", [{"ok": True, "version": 3, "effect": {}}], 3).raise_first_error()
