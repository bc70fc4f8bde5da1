"""The client: path resolution, block reads with fallback to the source bucket, writes.

What it needs from a region is a Protocol declared here and implemented elsewhere.
May import changelog and objstore; never mirror.
"""
