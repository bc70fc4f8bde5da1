-- The block copy queue's worker leases, its wake-up signal and the indexes its queries use
-- (mirror/copyqueue.py). The `blocks` table itself (0001) is the queue.

-- A claim is a lease, not an open transaction: a copy takes far longer than a transaction
-- should stay open. A pending block whose lease has expired (its worker was killed) is
-- claimable again.
ALTER TABLE blocks
    ADD COLUMN claimed_by  text,
    ADD COLUMN lease_until timestamptz;

-- Claim order: priority, then age, then slice and block index, so a file's blocks are copied
-- front to back (a reader warming a file wants its first blocks first). The index walks in
-- exactly that order, so a claim reads only the rows it takes (plus leased ones it skips).
DROP INDEX blocks_queue;
CREATE INDEX blocks_queue ON blocks (priority DESC, enqueued_at, slice_id, idx) INCLUDE (size)
    WHERE state = 'pending';
-- Oldest pending block, for status, without walking the whole backlog.
CREATE INDEX blocks_pending_age ON blocks (enqueued_at) WHERE state = 'pending';
-- Blocks waiting out a backoff after a failed attempt (usually few): "why is it pending".
CREATE INDEX blocks_retrying ON blocks (next_attempt_at) WHERE state = 'pending' AND attempts > 0;
-- Lease renewal and in-flight counts touch only claimed rows.
CREATE INDEX blocks_claimed ON blocks (claimed_by) WHERE claimed_by IS NOT NULL;

-- Wake idle workers the moment new blocks commit (NOTIFY is delivered at commit), so an idle
-- mirror starts copying a new block within a round trip instead of a polling interval. One
-- notification per statement, and PostgreSQL folds duplicates within a transaction.
CREATE FUNCTION blocks_enqueued_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mirrorfs_blocks', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER blocks_enqueued AFTER INSERT ON blocks
    FOR EACH STATEMENT EXECUTE FUNCTION blocks_enqueued_notify();
