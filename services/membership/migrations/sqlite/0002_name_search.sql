-- Name search (ListMembers.name_contains): the lower-cased "given family"
-- name, written by the service with every profile change. SQLite has no
-- index for substring search: it scans the program's members (by the
-- members_program index).
ALTER TABLE members ADD COLUMN name_search TEXT NOT NULL DEFAULT '';
UPDATE members SET name_search = lower(given_name || ' ' || family_name);
