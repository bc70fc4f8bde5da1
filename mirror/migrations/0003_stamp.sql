-- The owner's stamp lives in `meta` (mirror/stamp.py): `volume_id`, `volume`, `mirror` and
-- `bucket` say whose replica this database holds and which bucket its 'copied' rows are true
-- of. `mirror create` writes it with the snapshot load; the daemon refuses any other owner.
-- A stamp value is never empty: an empty value reads as "unknown" and would match anything.
ALTER TABLE meta ADD CONSTRAINT meta_stamp_not_empty
    CHECK (key NOT IN ('volume_id', 'volume', 'mirror', 'bucket') OR value <> '');
