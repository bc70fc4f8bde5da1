-- The mirror replica: the source namespace at `watermark.applied_version`, plus the block copy
-- queue and the GC queue of the mirror bucket. Row shapes follow changelog/effects.py.

-- One row: how far the replica has applied the changelog. Updated in the same transaction as
-- the records it covers, so it never claims more (or less) than the tables hold.
CREATE TABLE watermark (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    applied_version  bigint NOT NULL CHECK (applied_version >= 0),
    applied_ts       bigint NOT NULL,
    snapshot_version bigint,           -- version of the last snapshot loaded (NULL: never)
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Names of things: the mirror's own name, the source volume, the source URL...
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE inodes (
    ino      bigint PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('file', 'dir', 'symlink')),
    mode     integer NOT NULL,
    uid      bigint NOT NULL,
    gid      bigint NOT NULL,
    size     bigint NOT NULL,
    mtime_ms bigint NOT NULL,
    ctime_ms bigint NOT NULL,
    nlink    integer NOT NULL,
    target   text
);

-- COLLATE "C": names compare by bytes, which for UTF-8 is the code point order the source's
-- readdir pages in; any other collation would page differently on the two sides.
CREATE TABLE dentries (
    parent bigint NOT NULL,
    name   text COLLATE "C" NOT NULL,
    ino    bigint NOT NULL,
    PRIMARY KEY (parent, name)
);

-- Live slice table entries: one checksum per block.
CREATE TABLE slices (
    id        bigint PRIMARY KEY,
    size      bigint NOT NULL,
    checksums text[] NOT NULL
);

-- Refs of each chunk. `ord` orders a chunk's refs by commit: the version of the write record
-- that appended the ref, or its list index for refs loaded from a snapshot (always lower).
CREATE TABLE chunk_refs (
    ino         bigint NOT NULL,
    chunk_index bigint NOT NULL,
    ord         bigint NOT NULL,
    slice_id    bigint NOT NULL,
    size        bigint NOT NULL,
    off         bigint NOT NULL,
    len         bigint NOT NULL,
    pos         bigint NOT NULL,
    PRIMARY KEY (ino, chunk_index, ord)
);
-- A slice is committed once, so its id names its one ref (effects name refs this way).
CREATE UNIQUE INDEX chunk_refs_slice_id ON chunk_refs (slice_id);

-- Every block of every live slice; also the copy queue (workers take rows FOR UPDATE SKIP
-- LOCKED in queue order).
CREATE TABLE blocks (
    slice_id        bigint NOT NULL,
    idx             integer NOT NULL,
    size            integer NOT NULL,
    checksum        text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'copied', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    priority        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    copied_at       timestamptz,
    last_error      text,
    PRIMARY KEY (slice_id, idx)
);
-- INCLUDE (size): the backlog (count and bytes pending) is an index-only scan.
CREATE INDEX blocks_queue ON blocks (priority DESC, enqueued_at) INCLUDE (size)
    WHERE state = 'pending';
CREATE INDEX blocks_failed ON blocks (slice_id, idx) WHERE state = 'failed';

-- Blocks of slices that left the namespace: the mirror bucket's copies are garbage once the
-- grace period after `freed_version` has passed.
CREATE TABLE gc_queue (
    slice_id      bigint NOT NULL,
    idx           integer NOT NULL,
    size          integer NOT NULL,
    freed_version bigint NOT NULL,
    freed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slice_id, idx)
);
CREATE INDEX gc_queue_freed ON gc_queue (freed_version);

-- Version 0 is the empty namespace: just the root directory (changelog.effects.NamespaceState).
INSERT INTO watermark (applied_version, applied_ts) VALUES (0, 0);
INSERT INTO inodes VALUES (1, 'dir', 493, 0, 0, 0, 0, 0, 2, NULL);
