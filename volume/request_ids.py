"""Request ids: what makes a retried request recognisable, and how old it is.

    request_id = <creation time: ms since the epoch, 12 lowercase hex digits> "-" <uuid4 hex>

The source remembers a committed request for a time window (`source.dedup_window_s`) and
answers a retry with the first answer. To refuse, rather than re-apply, a retry that comes
after the window, it must know how old a request is without having remembered it: so the id
carries its creation time. The client mints one per logical request and sends the same id on
every retry; the API mints one (on the node's clock) when a request comes without one. One
canonical spelling per id (fixed width, lowercase), so an id maps to one compact integer key.
"""

from __future__ import annotations

import re
import time
import uuid

_ID = re.compile(r"^([0-9a-f]{12})-([0-9a-f]{32})$")
EXAMPLE = "018f2a3b4c5d-9b2f0c6e1d8a4f3b8e7d6c5b4a392817"


class MalformedRequestIdError(ValueError):
    """The id does not have the documented shape; says what was given."""


def new_request_id(now_ms: int | None = None) -> str:
    """A fresh id created now (or at `now_ms`)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{ms:012x}-{uuid.uuid4().hex}"


def parse_request_id(request_id: object) -> tuple[int, int]:
    """(creation time in ms, the id as one integer key); MalformedRequestIdError otherwise."""
    match = _ID.match(request_id) if isinstance(request_id, str) else None
    if match is None:
        shown = repr(request_id)[:80]
        raise MalformedRequestIdError(
            f"request_id {shown} is not <ms since epoch, 12 hex digits>-<32 hex digits>, "
            f"e.g. {EXAMPLE}"
        )
    ms_hex, rand_hex = match.groups()
    return int(ms_hex, 16), int(ms_hex + rand_hex, 16)
