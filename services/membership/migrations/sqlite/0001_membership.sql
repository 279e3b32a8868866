-- Programs: the validated definition (encoded loyalty.membership.v1.Program)
-- and its version for optimistic updates.
CREATE TABLE programs (
    program_id TEXT   PRIMARY KEY,
    definition BLOB   NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL, -- unix micros
    updated_at BIGINT NOT NULL
);

-- Members. Personal fields are NULL/empty once erased; the unique
-- constraints ignore NULLs, so an erased member's old phone can enrol again.
CREATE TABLE members (
    member_id          TEXT   PRIMARY KEY,
    program_id         TEXT   NOT NULL REFERENCES programs (program_id),
    external_id        TEXT,
    given_name         TEXT   NOT NULL DEFAULT '',
    family_name        TEXT   NOT NULL DEFAULT '',
    phone              TEXT,            -- E.164
    email              TEXT,            -- lower case
    birthday           TEXT,            -- YYYY-MM-DD
    birth_month        BIGINT,
    locale             TEXT   NOT NULL DEFAULT '',
    card_number        TEXT,
    preferences        TEXT   NOT NULL DEFAULT '{}', -- JSON object
    status             TEXT   NOT NULL, -- active, suspended, closed, erased
    enrolment_channel  TEXT   NOT NULL DEFAULT '',
    tier_code          TEXT   NOT NULL,
    tier_since         BIGINT NOT NULL,
    next_evaluation_at BIGINT NOT NULL,
    last_purchase_at   BIGINT,
    enrol_fingerprint  TEXT   NOT NULL, -- SHA-256 of the enrolment request
    version            BIGINT NOT NULL,
    enrolled_at        BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    CONSTRAINT members_external_id UNIQUE (program_id, external_id),
    CONSTRAINT members_phone UNIQUE (program_id, phone),
    CONSTRAINT members_email UNIQUE (program_id, email),
    CONSTRAINT members_card_number UNIQUE (program_id, card_number)
);
CREATE INDEX members_program ON members (program_id, member_id);
CREATE INDEX members_tier ON members (program_id, tier_code, member_id);
CREATE INDEX members_due ON members (program_id, next_evaluation_at);

CREATE TABLE member_tags (
    program_id TEXT NOT NULL,
    member_id  TEXT NOT NULL REFERENCES members (member_id),
    tag        TEXT NOT NULL,
    PRIMARY KEY (member_id, tag)
);
CREATE INDEX member_tags_tag ON member_tags (program_id, tag, member_id);

-- Current consent per purpose and channel, and every change.
CREATE TABLE consents (
    member_id      TEXT   NOT NULL REFERENCES members (member_id),
    purpose        TEXT   NOT NULL,
    channel        TEXT   NOT NULL,
    granted        BIGINT NOT NULL, -- 0 or 1
    policy_version TEXT   NOT NULL,
    source         TEXT   NOT NULL,
    changed_at     BIGINT NOT NULL,
    PRIMARY KEY (member_id, purpose, channel)
);
CREATE TABLE consent_history (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id      TEXT   NOT NULL,
    purpose        TEXT   NOT NULL,
    channel        TEXT   NOT NULL,
    granted        BIGINT NOT NULL,
    policy_version TEXT   NOT NULL,
    source         TEXT   NOT NULL,
    changed_at     BIGINT NOT NULL
);
CREATE INDEX consent_history_member ON consent_history (member_id, seq);

CREATE TABLE tier_history (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id        TEXT   NOT NULL,
    from_tier        TEXT   NOT NULL,
    to_tier          TEXT   NOT NULL,
    reason           TEXT   NOT NULL,
    qualifying_value BIGINT NOT NULL,
    changed_at       BIGINT NOT NULL
);
CREATE INDEX tier_history_member ON tier_history (member_id, seq);

-- Qualifying activity per member, so windows are computed exactly. Keyed by
-- its source (order id, order id/refund id, points entry id).
CREATE TABLE qualifying_activity (
    program_id  TEXT   NOT NULL,
    kind        TEXT   NOT NULL, -- purchase, refund, points
    source_id   TEXT   NOT NULL,
    member_id   TEXT   NOT NULL,
    amount      BIGINT NOT NULL, -- negative for refunds
    occurred_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, kind, source_id)
);
CREATE INDEX qualifying_activity_member ON qualifying_activity (program_id, member_id, occurred_at);

CREATE TABLE segments (
    program_id TEXT   NOT NULL,
    segment_id TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    rule       BLOB   NOT NULL, -- encoded loyalty.membership.v1.SegmentRule
    created_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, segment_id)
);

CREATE TABLE member_groups (
    program_id  TEXT   NOT NULL,
    group_id    TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (program_id, group_id)
);
CREATE TABLE group_members (
    program_id TEXT   NOT NULL,
    group_id   TEXT   NOT NULL,
    member_id  TEXT   NOT NULL REFERENCES members (member_id),
    joined_at  BIGINT NOT NULL,
    PRIMARY KEY (program_id, group_id, member_id)
);
CREATE INDEX group_members_member ON group_members (member_id);
