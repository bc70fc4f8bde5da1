"""SQL migrations of the mirror replica, applied in file-name order by `mirror.db.Database.migrate`.

A file is `NNNN_name.sql`; once released it never changes (add a new file instead).
"""
