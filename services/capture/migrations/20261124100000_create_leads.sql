-- Leads as captured, with normalized contact details (see #3; PII encryption comes with #4).
CREATE TABLE leads (
    lead_id      UUID        PRIMARY KEY,
    email        TEXT,
    email_free   BOOLEAN     NOT NULL DEFAULT false,
    phone        TEXT,
    phone_region TEXT,
    first_name   TEXT        NOT NULL DEFAULT '',
    last_name    TEXT        NOT NULL DEFAULT '',
    company      TEXT        NOT NULL DEFAULT '',
    source       TEXT        NOT NULL,
    channel      TEXT        NOT NULL,
    campaign     TEXT        NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX leads_email ON leads (email) WHERE email IS NOT NULL;
CREATE INDEX leads_phone ON leads (phone) WHERE phone IS NOT NULL;
