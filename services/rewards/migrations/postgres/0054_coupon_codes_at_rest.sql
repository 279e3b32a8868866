-- Coupon codes at rest (docs/adr/0009-coupon-codes-at-rest.md): a code is
-- found by a keyed digest, HMAC-SHA256(lookup key, program_id || 0 || code),
-- and shown from its sealed form (AES-256-GCM, bound to program and coupon).
-- SQL has no key, so rows issued before this migration keep their code in
-- clear until the service's start-up job seals them and blanks `code`; the
-- clear code's uniqueness holds only while it is set.
ALTER TABLE coupons ADD COLUMN code_digest BYTEA;
ALTER TABLE coupons ADD COLUMN code_sealed BYTEA;
ALTER TABLE coupons DROP CONSTRAINT coupons_program_id_code_key;
CREATE UNIQUE INDEX coupons_code_digest ON coupons (program_id, code_digest);
-- what lookups fall back to, and the sealing job scans, until no clear code is left
CREATE UNIQUE INDEX coupons_clear_code ON coupons (program_id, code) WHERE code <> '';
-- a code is either in clear (not yet sealed) or sealed with its digest, never both
ALTER TABLE coupons ADD CONSTRAINT coupons_code_clear_or_sealed CHECK (
    (code <> '' AND code_digest IS NULL AND code_sealed IS NULL)
    OR (code = '' AND code_digest IS NOT NULL AND code_sealed IS NOT NULL)
);
