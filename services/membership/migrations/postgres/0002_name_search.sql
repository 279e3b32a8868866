-- Name search (ListMembers.name_contains): the lower-cased "given family"
-- name, written by the service with every profile change. A trigram index
-- serves substring search where pg_trgm can be installed; without it the
-- search scans the program's members.
ALTER TABLE members ADD COLUMN name_search TEXT NOT NULL DEFAULT '';
UPDATE members SET name_search = lower(given_name || ' ' || family_name);
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX members_name_search ON members USING gin (name_search gin_trgm_ops);
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm is not available: name search scans the program''s members';
END $$;
