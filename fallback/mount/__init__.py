"""The FUSE mount: the client's read and write paths served to the kernel (pyfuse3).

Imports pyfuse3 (the `mount` extra), so nothing outside the mount imports this package.
"""

from fallback.mount.ops import MountOperations, MountOptions
from fallback.mount.run import mount_options, serve, unmount

__all__ = ["MountOperations", "MountOptions", "mount_options", "serve", "unmount"]
