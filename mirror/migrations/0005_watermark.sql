-- Readers of the region wait on the watermark (mirror/watermark.py): the consistency gate for a
-- read over its window, a write from this region for its own version to show.

-- The follower's estimate of the source's clock against this host's (mirror/follow/skew.py):
-- a lower bound, in ms, of how far the source's clock runs ahead (negative: behind, or just
-- the one-way delay). NULL: not measured yet.
ALTER TABLE watermark ADD COLUMN source_clock_skew_ms bigint;

-- Wake waiting readers the moment a batch commits (NOTIFY is delivered at commit), with
-- "applied_version:applied_ts" as payload (readers keep the watermark in memory from it); the
-- applier and the snapshot loader both move the watermark by an UPDATE of applied_version, so
-- one trigger covers both. The skew's own updates do not fire it.
CREATE FUNCTION watermark_moved_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mirrorfs_watermark', NEW.applied_version || ':' || NEW.applied_ts);
    RETURN NULL;
END
$$;
CREATE TRIGGER watermark_moved AFTER UPDATE OF applied_version ON watermark
    FOR EACH ROW WHEN (NEW.applied_version IS DISTINCT FROM OLD.applied_version)
    EXECUTE FUNCTION watermark_moved_notify();
