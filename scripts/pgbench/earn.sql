-- The raw durable earn transaction, as RecordPurchase writes it: a ledger
-- entry (unique order id, rule explanation, entry hash), the member's
-- balance, and a PointsEarned outbox row, committed together.
-- pgbench variable: members (set by loyalty-bench with -D).
\set member random(1, :members)
\set points random(1, 500)
BEGIN;
INSERT INTO bench_earn.ledger (id, program_id, member_id, kind, points, order_id, cause, available_at, expires_at, hash, created_at)
VALUES (gen_random_uuid()::text, 'p1', 'm' || :member, 'earn', :points, 'o-' || gen_random_uuid()::text,
        '{"rules":[{"id":"base-rate","version":3,"points":' || :points || '}]}',
        (extract(epoch FROM now()) * 1000000)::bigint,
        (extract(epoch FROM now()) * 1000000)::bigint + 31536000000000,
        encode(sha256(convert_to('p1/m' || :member || '/' || :points || '/' || clock_timestamp(), 'UTF8')), 'hex'),
        (extract(epoch FROM now()) * 1000000)::bigint);
UPDATE bench_earn.accounts
   SET available = available + :points, lifetime_earned = lifetime_earned + :points,
       version = version + 1, updated_at = (extract(epoch FROM now()) * 1000000)::bigint
 WHERE program_id = 'p1' AND member_id = 'm' || :member;
INSERT INTO bench_earn.outbox (event_id, event_type, ordering_key, payload, created_at)
VALUES (gen_random_uuid()::text, 'loyalty.events.v1.PointsEarned', 'm' || :member,
        convert_to(repeat('x', 180), 'UTF8'), (extract(epoch FROM now()) * 1000000)::bigint);
END;
