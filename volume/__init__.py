"""What every region agrees on: config, errors and their wire codec, the inode and chunk model,
paths, records and frames, the effect contract, the snapshot format, the source API client.

May import objstore only; changelog, mirror and fallback meet here and nowhere else.
"""
