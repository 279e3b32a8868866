-- Coupon codes at rest (docs/adr/0009-coupon-codes-at-rest.md): a code is
-- found by a keyed digest, HMAC-SHA256(lookup key, program_id || 0 || code),
-- and shown from its sealed form (AES-256-GCM, bound to program and coupon).
-- SQL has no key, so rows issued before this migration keep their code in
-- clear until the service's start-up job seals them and blanks `code`; the
-- clear code's uniqueness holds only while it is set.
--
-- SQLite cannot drop the table constraint UNIQUE (program_id, code): the
-- table is rebuilt (as 0010 rebuilt the ledger tables), then its indexes.
CREATE TABLE coupons_at_rest (
    coupon_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    code TEXT NOT NULL,
    source TEXT NOT NULL,
    -- dedupe key of automatic issues: redemption:<id>, campaign:<action id>
    issue_key TEXT,
    campaign_id TEXT,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    redeemed_at INTEGER,
    redeemed_order_id TEXT,
    expired_at INTEGER,
    code_digest BLOB,
    code_sealed BLOB,
    UNIQUE (program_id, issue_key),
    -- a code is either in clear (not yet sealed) or sealed with its digest, never both
    CONSTRAINT coupons_code_clear_or_sealed CHECK (
        (code <> '' AND code_digest IS NULL AND code_sealed IS NULL)
        OR (code = '' AND code_digest IS NOT NULL AND code_sealed IS NOT NULL)
    )
);
INSERT INTO coupons_at_rest (coupon_id, program_id, pool_id, member_id, code, source, issue_key,
    campaign_id, issued_at, expires_at, redeemed_at, redeemed_order_id, expired_at)
SELECT coupon_id, program_id, pool_id, member_id, code, source, issue_key, campaign_id,
    issued_at, expires_at, redeemed_at, redeemed_order_id, expired_at
FROM coupons;
DROP TABLE coupons;
ALTER TABLE coupons_at_rest RENAME TO coupons;
CREATE INDEX coupons_member ON coupons (program_id, member_id, coupon_id);
CREATE INDEX coupons_due_to_expire ON coupons (expires_at, coupon_id)
    WHERE redeemed_at IS NULL AND expired_at IS NULL;
CREATE UNIQUE INDEX coupons_code_digest ON coupons (program_id, code_digest);
-- what lookups fall back to, and the sealing job scans, until no clear code is left
CREATE UNIQUE INDEX coupons_clear_code ON coupons (program_id, code) WHERE code <> '';
