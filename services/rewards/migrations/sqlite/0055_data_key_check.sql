-- Which data key this database is sealed with (docs/adr/0009-coupon-codes-at-rest.md):
-- one row, written by the first start of the service after this migration,
-- holding the key's public identifier (DataKeyId: 16 bytes in hex of its
-- derivation for a purpose of its own, never the key or a sub-key). A
-- start with a key of another identifier refuses to serve instead of failing
-- on every sealed coupon code.
CREATE TABLE data_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
