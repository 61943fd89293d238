-- Events a consumer group has applied; written in the same transaction as the effect, so a
-- redelivered event is recognised and skipped (see #3).
CREATE TABLE processed_events (
    consumer_group TEXT        NOT NULL,
    event_id       UUID        NOT NULL,
    stream         TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    processed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
