-- Engagement half of the rewards service: catalog and redemption orders,
-- coupons, badges, referrals, partner exchange. Points move only through
-- the ledger (0001); these tables hold what was reserved, issued, awarded.

CREATE TABLE catalog_items (
    item_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    points_cost INTEGER NOT NULL CHECK (points_cost > 0),
    unlimited_stock INTEGER NOT NULL,
    -- never below zero: the reservation is a conditional decrement
    stock_remaining INTEGER NOT NULL CHECK (stock_remaining >= 0),
    per_member_limit INTEGER NOT NULL DEFAULT 0,
    eligible_tiers TEXT NOT NULL DEFAULT '', -- tier codes, one per line
    valid_from INTEGER,
    valid_until INTEGER,
    coupon_pool_id TEXT,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX catalog_items_program ON catalog_items (program_id, item_id);

-- units of an item a member holds in reserved or fulfilled orders
CREATE TABLE catalog_holdings (
    program_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    held INTEGER NOT NULL CHECK (held >= 0),
    PRIMARY KEY (program_id, item_id, member_id)
);

CREATE TABLE redemptions (
    redemption_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    points INTEGER NOT NULL,
    state TEXT NOT NULL,
    coupon_id TEXT,
    debit_entry_id TEXT NOT NULL,
    reversal_entry_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX redemptions_member ON redemptions (program_id, member_id, redemption_id);

CREATE TABLE coupon_pools (
    pool_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    discount_minor INTEGER,
    discount_currency TEXT,
    valid_days INTEGER NOT NULL CHECK (valid_days > 0),
    max_issued INTEGER NOT NULL DEFAULT 0,
    issued_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    CHECK (max_issued = 0 OR issued_count <= max_issued)
);
CREATE INDEX coupon_pools_program ON coupon_pools (program_id, pool_id);

CREATE TABLE coupons (
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
    UNIQUE (program_id, code),
    UNIQUE (program_id, issue_key)
);
CREATE INDEX coupons_member ON coupons (program_id, member_id, coupon_id);

-- failed validations/redemptions per caller and fixed window
CREATE TABLE coupon_attempt_failures (
    program_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (program_id, caller, window_start)
);

CREATE TABLE badges (
    program_id TEXT NOT NULL,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    conditions TEXT NOT NULL, -- counter>=n, one per line
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, code)
);

CREATE TABLE badge_counters (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    purchases INTEGER NOT NULL DEFAULT 0,
    reviews INTEGER NOT NULL DEFAULT 0,
    check_ins INTEGER NOT NULL DEFAULT 0,
    best_streak INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE member_badges (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    code TEXT NOT NULL,
    awarded_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, member_id, code)
);

CREATE TABLE referral_terms (
    program_id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    referrer_points INTEGER NOT NULL CHECK (referrer_points >= 0),
    referee_points INTEGER NOT NULL CHECK (referee_points >= 0),
    min_purchase_minor INTEGER,
    min_purchase_currency TEXT,
    updated_at INTEGER NOT NULL
);

CREATE TABLE referral_codes (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    code TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, member_id),
    UNIQUE (program_id, code)
);

CREATE TABLE referrals (
    referral_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    referrer_id TEXT NOT NULL,
    referee_id TEXT NOT NULL,
    state TEXT NOT NULL,
    referrer_points INTEGER NOT NULL DEFAULT 0,
    referee_points INTEGER NOT NULL DEFAULT 0,
    qualifying_order_id TEXT,
    created_at INTEGER NOT NULL,
    qualified_at INTEGER,
    -- a member is referred at most once
    UNIQUE (program_id, referee_id)
);
CREATE INDEX referrals_referrer ON referrals (program_id, referrer_id, referral_id);

-- contact hashes from MemberEnrolled (erased on MemberErased)
CREATE TABLE member_contact_hashes (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    contact_hash TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id, contact_hash)
);
CREATE INDEX member_contact_hashes_hash ON member_contact_hashes (program_id, contact_hash);

-- members known to have purchased (referral eligibility)
CREATE TABLE referral_purchasers (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    first_order_id TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE partners (
    program_id TEXT NOT NULL,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    unit_name TEXT NOT NULL,
    out_from INTEGER,
    out_to INTEGER,
    in_from INTEGER,
    in_to INTEGER,
    limit_period TEXT NOT NULL,
    member_limit_out INTEGER NOT NULL DEFAULT 0,
    member_limit_in INTEGER NOT NULL DEFAULT 0,
    program_limit_out INTEGER NOT NULL DEFAULT 0,
    program_limit_in INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (program_id, code)
);

-- points exchanged per partner, direction, scope (member id or '*') and period
CREATE TABLE partner_usage (
    program_id TEXT NOT NULL,
    partner_code TEXT NOT NULL,
    direction TEXT NOT NULL,
    scope TEXT NOT NULL,
    period_key TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (program_id, partner_code, direction, scope, period_key)
);

CREATE TABLE partner_transfers (
    transfer_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    partner_code TEXT NOT NULL,
    direction TEXT NOT NULL,
    points INTEGER NOT NULL,
    partner_units INTEGER NOT NULL,
    partner_reference TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- the partner's transaction id is credited once
    UNIQUE (program_id, partner_code, direction, partner_reference)
);
CREATE INDEX partner_transfers_member ON partner_transfers (program_id, member_id, transfer_id);
