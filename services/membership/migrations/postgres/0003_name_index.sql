-- Name search index: on PostgreSQL the pg_trgm index of 0002 serves it
-- already; this step only keeps the schema versions of both engines in
-- step (SQLite adds an FTS5 trigram index here).
SELECT 1;
