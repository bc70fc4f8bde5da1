"""Buckets: one small async interface over local directories and S3, plus layers around it.

Retry, logging, metrics and fault injection wrap a backend; block keys and checksums live here.
Imports nothing from the rest of the project.
"""

from objstore.base import ObjectMeta, ObjectStore, StoreLayer, copy_object
from objstore.errors import NotFoundError, RateLimitedError, StoreError, UnavailableError
from objstore.registry import open_store

__all__ = [
    "NotFoundError",
    "ObjectMeta",
    "ObjectStore",
    "RateLimitedError",
    "StoreError",
    "StoreLayer",
    "UnavailableError",
    "copy_object",
    "open_store",
]
