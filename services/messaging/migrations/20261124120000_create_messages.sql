-- Every message handed to a provider, keyed by its deterministic id so a redelivered cause
-- never sends twice (see #3).
CREATE TABLE messages (
    message_id UUID        PRIMARY KEY,
    lead_id    UUID        NOT NULL,
    channel    TEXT        NOT NULL,
    template   TEXT        NOT NULL,
    provider   TEXT        NOT NULL,
    subject    TEXT        NOT NULL,
    sent_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX messages_lead ON messages (lead_id, sent_at);

-- Inbound contact: replies, answered calls, booked meetings.
CREATE TABLE inbound (
    inbound_id      UUID        PRIMARY KEY,
    lead_id         UUID        NOT NULL,
    channel         TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    idempotency_key TEXT        UNIQUE,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
