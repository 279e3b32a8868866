-- When the coupon expiry job marked an unused coupon expired (unset: not
-- marked yet; validation refuses a coupon past expires_at either way).
ALTER TABLE coupons ADD COLUMN expired_at INTEGER;
-- what the expiry job scans: unused, unmarked coupons by validity end
CREATE INDEX coupons_due_to_expire ON coupons (expires_at, coupon_id)
    WHERE redeemed_at IS NULL AND expired_at IS NULL;
