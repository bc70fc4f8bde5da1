"""The source's durable changelog: framed segment files, their sidecar index, the reader.

Every node keeps its own copy; retention trims whole segments from the front.
May import volume only.
"""

from changelog.log.segments import SegmentGapError, SegmentLog

__all__ = ["SegmentGapError", "SegmentLog"]
