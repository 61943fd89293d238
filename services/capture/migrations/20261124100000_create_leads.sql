-- capture's schema (see #3, #4). Personal data (names, email, phone, IP, user agent) is
-- sealed under a per-lead data key (`data_key`, wrapped by the service's key-encryption key);
-- email and phone are found through keyed blind indexes whose unique constraints make two
-- leads for one person impossible.

-- Registered sources; `settings` is an encoded leadflow.capture.v1.SourceSettings.
CREATE TABLE sources (
    source_id  TEXT        PRIMARY KEY,
    settings   BYTEA       NOT NULL,
    -- Public key of the source's web form (also inside `settings`), for lookups by URL.
    form_key   TEXT        UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE leads (
    lead_id          UUID        PRIMARY KEY,
    source_id        TEXT        NOT NULL REFERENCES sources (source_id),
    channel          TEXT        NOT NULL,
    campaign         TEXT        NOT NULL DEFAULT '',
    -- Wrapped data key; NULL once erased (crypto-shredding).
    data_key         BYTEA,
    email_bidx       BYTEA       UNIQUE,
    phone_bidx       BYTEA       UNIQUE,
    email_sealed     BYTEA,
    phone_sealed     BYTEA,
    first_name_sealed BYTEA,
    last_name_sealed BYTEA,
    email_kind       TEXT        NOT NULL DEFAULT 'none',
    email_role       BOOLEAN     NOT NULL DEFAULT false,
    phone_region     TEXT        NOT NULL DEFAULT '',
    phone_line_type  TEXT        NOT NULL DEFAULT '',
    company          TEXT        NOT NULL DEFAULT '',
    country          TEXT        NOT NULL DEFAULT '',
    website          TEXT        NOT NULL DEFAULT '',
    job_title        TEXT        NOT NULL DEFAULT '',
    quality_score    INTEGER     NOT NULL,
    touch_count      INTEGER     NOT NULL DEFAULT 1,
    erased_at        TIMESTAMPTZ,
    returned_at      TIMESTAMPTZ,
    return_reason    TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_captured_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX leads_source_created ON leads (source_id, created_at);

-- Every capture of a lead with its attribution; the first one is never overwritten.
CREATE TABLE touches (
    touch_id     UUID        PRIMARY KEY,
    lead_id      UUID        NOT NULL REFERENCES leads (lead_id),
    source_id    TEXT        NOT NULL,
    channel      TEXT        NOT NULL,
    campaign     TEXT        NOT NULL DEFAULT '',
    utm_source   TEXT        NOT NULL DEFAULT '',
    utm_medium   TEXT        NOT NULL DEFAULT '',
    utm_campaign TEXT        NOT NULL DEFAULT '',
    utm_term     TEXT        NOT NULL DEFAULT '',
    utm_content  TEXT        NOT NULL DEFAULT '',
    gclid        TEXT        NOT NULL DEFAULT '',
    fbclid       TEXT        NOT NULL DEFAULT '',
    referrer     TEXT        NOT NULL DEFAULT '',
    landing_page TEXT        NOT NULL DEFAULT '',
    captured_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX touches_lead ON touches (lead_id, captured_at, touch_id);

-- Consent evidence: one immutable record per capture that carried consent.
CREATE TABLE consents (
    consent_id        UUID        PRIMARY KEY,
    lead_id           UUID        NOT NULL REFERENCES leads (lead_id),
    channels          TEXT[]      NOT NULL,
    disclosure_text   TEXT        NOT NULL,
    disclosure_sha256 TEXT        NOT NULL,
    form_url          TEXT        NOT NULL DEFAULT '',
    form_version      TEXT        NOT NULL DEFAULT '',
    ip_sealed         BYTEA,
    user_agent_sealed BYTEA,
    legal_basis       TEXT        NOT NULL,
    given_at          TIMESTAMPTZ NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX consents_lead ON consents (lead_id, recorded_at);

CREATE FUNCTION consents_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent records are evidence and cannot be changed or deleted';
END;
$$;

CREATE TRIGGER consents_immutable BEFORE UPDATE OR DELETE ON consents
    FOR EACH ROW EXECUTE FUNCTION consents_immutable();

-- Answers to requests that carried an `idempotency-key`, sealed under the lead's data key,
-- kept 24 hours.
CREATE TABLE idempotency (
    caller          TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    request_sha256  BYTEA       NOT NULL,
    lead_id         UUID,
    response_sealed BYTEA,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, idempotency_key)
);

-- People who must not be re-imported or re-contacted: blind indexes only.
CREATE TABLE suppressions (
    bidx       BYTEA       PRIMARY KEY,
    kind       TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who erased what and why, without personal data.
CREATE TABLE erasures (
    lead_id   UUID        PRIMARY KEY,
    reason    TEXT        NOT NULL,
    caller    TEXT        NOT NULL,
    erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
