"""Buckets: one small async interface over local directories and S3, plus layers around it.

Retry, logging, metrics, rate and concurrency limits and fault injection wrap a backend;
block keys and checksums live here.
Imports nothing from the rest of the project.
"""

from objstore.base import ObjectMeta, ObjectStore, StoreLayer, copy_object
from objstore.errors import (
    NotFoundError,
    RateLimitedError,
    StoreError,
    UnavailableError,
    UnsupportedError,
)
from objstore.limits import BandwidthLayer, ConcurrencyLayer, TokenBucket
from objstore.registry import open_store

__all__ = [
    "BandwidthLayer",
    "ConcurrencyLayer",
    "NotFoundError",
    "ObjectMeta",
    "ObjectStore",
    "RateLimitedError",
    "StoreError",
    "StoreLayer",
    "TokenBucket",
    "UnavailableError",
    "UnsupportedError",
    "copy_object",
    "open_store",
]
