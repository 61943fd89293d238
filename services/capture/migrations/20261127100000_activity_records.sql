-- Which row of a lead family each activity came through (see #4), so `UnmergeLead` can give
-- a restored lead back what it did while it was merged.
--
-- `activities.lead_id` stays the surviving lead an activity was recorded for (its events name
-- it). `record_id` is the row the person was named by: the lead id the caller gave (a merged
-- record's id too), the row a browser's visitor is linked to, or the lead holding the identity.
-- A capture links its browser to its own row (a merged re-capture's record, not the lead it was
-- folded into), so an activity recorded through that browser belongs to that record.
--
-- Unmerging a row moves to it every activity that came through it or a row merged into it and
-- is recorded for a lead outside those rows; activities recorded for the row itself stay.

ALTER TABLE activities ADD COLUMN record_id UUID REFERENCES leads (lead_id);

UPDATE activities SET record_id = lead_id WHERE lead_id IS NOT NULL;

CREATE INDEX activities_record ON activities (record_id) WHERE record_id IS NOT NULL;
-- A lead's activities, newest first, for `ListActivities`.
CREATE INDEX activities_lead_newest ON activities (lead_id, occurred_at DESC, activity_id DESC)
    WHERE lead_id IS NOT NULL;
DROP INDEX activities_lead;
