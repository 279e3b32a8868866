-- Transactional outbox: a service writes its state change and its events in
-- one transaction; the relay publishes rows in seq order and marks them.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    event_type   TEXT    NOT NULL,
    ordering_key TEXT    NOT NULL,
    payload      BLOB    NOT NULL, -- encoded loyalty.events.v1.EventEnvelope
    created_at   BIGINT  NOT NULL, -- unix micros
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- Consumer inbox: an event id recorded here in the same transaction as the
-- consumer's effects makes at-least-once delivery apply effects once.
CREATE TABLE inbox (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Events a consumer could not apply after its retries: parked here (and
-- recorded in the inbox) so that one poison event does not stop the others.
CREATE TABLE dead_letters (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    event_type TEXT   NOT NULL,
    payload    BLOB     NOT NULL,
    error      TEXT   NOT NULL,
    attempts   BIGINT NOT NULL,
    failed_at  BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
