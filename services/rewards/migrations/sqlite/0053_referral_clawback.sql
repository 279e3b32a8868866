-- What the qualifying order cost (to tell a refund in full), how much of it
-- was refunded, and when both rewards were taken back. Referrals qualified
-- before this migration have no recorded cost and are never taken back.
ALTER TABLE referrals ADD COLUMN qualifying_minor INTEGER;
ALTER TABLE referrals ADD COLUMN qualifying_currency TEXT;
ALTER TABLE referrals ADD COLUMN refunded_minor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE referrals ADD COLUMN clawed_back_at INTEGER;

-- refunds of a qualifying order already counted: one refund announced
-- twice (under two event ids) counts once
CREATE TABLE referral_refunds (
    referral_id TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    PRIMARY KEY (referral_id, refund_id)
);
