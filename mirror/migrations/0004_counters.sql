-- Read counters of the region's clients (mirror/region_counters.py): every process adds its
-- counts to one row per name, so `mirror status` and /metrics show the region's sum. Only
-- ever added to (a monotonic counter, as Prometheus expects); never reset by a restart.
CREATE TABLE IF NOT EXISTS region_counters (
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value bigint NOT NULL DEFAULT 0 CHECK (value >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
