-- One row per lead: its channel and current stage, folded from the streams (see #3).
-- Stages are `leadflow.events.v1.LeadStage` numbers; `stage_sequence` keeps the latest move
-- when stage changes arrive out of order.
CREATE TABLE lead_funnel (
    lead_id        UUID        PRIMARY KEY,
    channel        TEXT,
    stage          SMALLINT    NOT NULL,
    stage_sequence INTEGER     NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX lead_funnel_stage_channel ON lead_funnel (stage, channel);

-- Events folded, per type: a cheap check that every stream is being read.
CREATE TABLE event_counts (
    event_type TEXT   PRIMARY KEY,
    events     BIGINT NOT NULL
);
