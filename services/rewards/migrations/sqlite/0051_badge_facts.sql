-- Facts already counted for badges (order id, review id, check-in day), so
-- that one purchase announced twice under different event ids counts once.
CREATE TABLE badge_counted_facts (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    fact TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id, fact)
);
