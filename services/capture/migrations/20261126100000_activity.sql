-- Activity tracking (product §1): page visits, downloads, webinars and other things people
-- do, recorded through `RecordActivity` and the snippet's HTTP endpoint, each emitted as
-- `lead.activity` through the outbox in the same transaction as its row.
--
-- A browser is a visitor, named by the random id of its tracking cookie. Activities of a
-- visitor no lead is linked to yet are anonymous (`lead_id` NULL); a capture carrying the
-- visitor id links the visitor to its lead and hands the lead those activities. Nothing here
-- is personal but the visitor id itself: no email, phone, IP address, user agent or query
-- string is stored. Erasing a lead deletes its visitors and clears the titles and URLs of its
-- activities.

-- Browsers, by tracking cookie; `lead_id` is the lead the latest capture in that browser was
-- (the latest identification wins; activities already recorded stay with their lead).
CREATE TABLE visitors (
    visitor_id    UUID        PRIMARY KEY,
    lead_id       UUID        REFERENCES leads (lead_id),
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    linked_at     TIMESTAMPTZ
);

-- Erasure deletes a lead family's visitors.
CREATE INDEX visitors_lead ON visitors (lead_id) WHERE lead_id IS NOT NULL;
-- The retention sweep deletes visitors never linked and not seen for a while.
CREATE INDEX visitors_unlinked_seen ON visitors (last_seen_at) WHERE lead_id IS NULL;

CREATE TABLE activities (
    -- The client's id when it gave one (retries are idempotent by it), else made by capture.
    activity_id  UUID        PRIMARY KEY,
    -- The lead it was recorded for (the surviving lead of a merged one); NULL while anonymous.
    lead_id      UUID        REFERENCES leads (lead_id),
    -- The browser it came from; no foreign key: a visitor row goes when its lead is erased,
    -- and this column is cleared then.
    visitor_id   UUID,
    kind         TEXT        NOT NULL CHECK (kind IN ('page_visit', 'pricing_page_view', 'download',
                                 'webinar_registered', 'webinar_attended', 'video_watched', 'other')),
    -- For `other`: a token naming it.
    name         TEXT        NOT NULL DEFAULT '',
    asset        TEXT        NOT NULL DEFAULT '',
    -- Scheme, host and path only.
    url          TEXT        NOT NULL DEFAULT '',
    title        TEXT        NOT NULL DEFAULT '',
    source_id    TEXT        NOT NULL REFERENCES sources (source_id),
    -- Who recorded it: an API key id, or `form:<source>` for the snippet's endpoint.
    caller       TEXT        NOT NULL,
    -- Recorded while its visitor was anonymous (its event went out when the visitor was linked).
    anonymous    BOOLEAN     NOT NULL,
    -- Keyed hash of the request, to tell a retry from a reuse of the id with another request.
    fingerprint  BYTEA       NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    linked_at    TIMESTAMPTZ,
    CHECK (lead_id IS NOT NULL OR visitor_id IS NOT NULL)
);

CREATE INDEX activities_lead ON activities (lead_id, occurred_at) WHERE lead_id IS NOT NULL;
-- A visitor's anonymous activities, found when it is linked, and by age for the retention sweep.
CREATE INDEX activities_anonymous ON activities (visitor_id, occurred_at) WHERE lead_id IS NULL;
CREATE INDEX activities_anonymous_recorded ON activities (recorded_at) WHERE lead_id IS NULL;
