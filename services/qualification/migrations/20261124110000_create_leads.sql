-- Leads as qualification sees them: stage, score and the rules behind it (see #3).
CREATE TABLE leads (
    lead_id          UUID        PRIMARY KEY,
    stage            TEXT        NOT NULL,
    stage_sequence   INTEGER     NOT NULL,
    channel          TEXT        NOT NULL,
    model_version    TEXT        NOT NULL,
    fit_score        INTEGER     NOT NULL,
    engagement_score INTEGER     NOT NULL,
    total_score      INTEGER     NOT NULL,
    hits             JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every move between stages; analytics derives velocity from the same facts.
CREATE TABLE stage_history (
    lead_id        UUID        NOT NULL REFERENCES leads (lead_id),
    sequence       INTEGER     NOT NULL,
    from_stage     TEXT,
    to_stage       TEXT        NOT NULL,
    entered_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor          TEXT        NOT NULL,
    cause_event_id UUID,
    PRIMARY KEY (lead_id, sequence)
);
