"""FaultLayer: inject failures and corruption between a layer and a backend, for tests.

Fault injection is a layer like any other, so the code under test is the production stack with
one more wrapper, never a mock. Faults are consumed in order; each verb checks the plan first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from objstore.base import ObjectMeta, ObjectStore, StoreLayer
from objstore.errors import StoreError


@dataclass
class FaultPlan:
    """`errors[op]` are raised by the next calls of `op` ("*" for any), oldest first."""

    errors: dict[str, list[StoreError]] = field(default_factory=dict)
    corrupt_get: Callable[[str, bytes], bytes] | None = None
    calls: dict[str, int] = field(default_factory=dict)

    def fail(self, op: str, *errors: StoreError) -> None:
        self.errors.setdefault(op, []).extend(errors)

    def _take(self, op: str) -> StoreError | None:
        self.calls[op] = self.calls.get(op, 0) + 1
        for name in (op, "*"):
            queue = self.errors.get(name)
            if queue:
                return queue.pop(0)
        return None


class FaultLayer(StoreLayer):
    def __init__(self, inner: ObjectStore, plan: FaultPlan | None = None) -> None:
        super().__init__(inner)
        self.plan = plan or FaultPlan()

    def _check(self, op: str) -> None:
        err = self.plan._take(op)
        if err is not None:
            raise err

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        self._check("get")
        data = await self.inner.get(key, offset=offset, length=length)
        return self.plan.corrupt_get(key, data) if self.plan.corrupt_get else data

    async def head(self, key: str) -> ObjectMeta:
        self._check("head")
        return await self.inner.head(key)

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        self._check("put")
        return await self.inner.put(key, data)

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        self._check("copy")
        return await self.inner.copy_from(source, meta)

    async def delete(self, key: str) -> None:
        self._check("delete")
        await self.inner.delete(key)
