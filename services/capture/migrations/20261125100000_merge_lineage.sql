-- Merge lineage, the merge review queue and unmerge (see #4).
--
-- Every capture folded into a known lead is kept as its own row (a "record") under its own
-- data key, pointing at the lead it was merged into; touches and consents stay with the record
-- they came with, so an unmerge gives the record back exactly as it was captured. Only a lead
-- that is not merged claims its identities (`email_bidx`/`phone_bidx`, unique); every row
-- keeps its own identities in `email_digest`/`phone_digest` (same keyed hash, not unique) so an
-- unmerged record can claim them again and erasure can suppress them all.

ALTER TABLE leads
    ADD COLUMN merged_into  UUID REFERENCES leads (lead_id),
    ADD COLUMN merged_at    TIMESTAMPTZ,
    ADD COLUMN email_digest BYTEA,
    ADD COLUMN phone_digest BYTEA;

UPDATE leads SET email_digest = email_bidx, phone_digest = phone_bidx;

CREATE INDEX leads_merged_into ON leads (merged_into) WHERE merged_into IS NOT NULL;
CREATE INDEX leads_unmerged ON leads (lead_id) WHERE merged_into IS NULL;

-- One row per merge: which row went into which lead, the fields it filled, and the lead's
-- columns just before and just after (sealed columns stay sealed), so `UnmergeLead` can put
-- back what the merge changed and nothing a later change touched.
CREATE TABLE merges (
    merge_id       UUID        PRIMARY KEY,
    lead_id        UUID        NOT NULL REFERENCES leads (lead_id),
    merged_lead_id UUID        NOT NULL REFERENCES leads (lead_id),
    -- `capture`: a re-capture folded in; `lead`: a whole lead folded in after a review.
    kind           TEXT        NOT NULL CHECK (kind IN ('capture', 'lead')),
    source_id      TEXT        NOT NULL,
    fields_filled  TEXT[]      NOT NULL,
    before         JSONB       NOT NULL,
    after          JSONB       NOT NULL,
    review_id      UUID,
    merged_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    unmerged_at    TIMESTAMPTZ,
    unmerged_by    TEXT
);

CREATE INDEX merges_lead ON merges (lead_id, merged_at);
CREATE INDEX merges_merged_lead ON merges (merged_lead_id);

-- Captures held instead of merged: they would have mixed two leads or two consent states.
-- The request is sealed under the review's own data key, destroyed once resolved.
CREATE TABLE merge_reviews (
    review_id                UUID        PRIMARY KEY,
    reason                   TEXT        NOT NULL CHECK (reason IN ('identity_conflict', 'consent_mismatch')),
    status                   TEXT        NOT NULL DEFAULT 'pending'
                                         CHECK (status IN ('pending', 'merged', 'kept_separate', 'discarded')),
    lead_id                  UUID        NOT NULL REFERENCES leads (lead_id),
    other_lead_id            UUID        REFERENCES leads (lead_id),
    source_id                TEXT        NOT NULL,
    caller                   TEXT        NOT NULL,
    data_key                 BYTEA,
    request_sealed           BYTEA,
    lead_consent_channels    TEXT[]      NOT NULL,
    capture_consent_channels TEXT[]      NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at              TIMESTAMPTZ,
    resolved_by              TEXT,
    note                     TEXT        NOT NULL DEFAULT '',
    result_lead_id           UUID,
    merge_id                 UUID
);

CREATE INDEX merge_reviews_pending ON merge_reviews (created_at, review_id) WHERE status = 'pending';
CREATE INDEX merge_reviews_lead ON merge_reviews (lead_id);
