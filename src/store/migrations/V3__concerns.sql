-- Concerns (rule R9): what people tell us when they think their data was
-- mishandled.
--
-- A concern may name no subject (anyone may complain), so it is keyed by its
-- own id; subject_id is kept for lookups and for distribution by subject
-- where there is one.
CREATE TABLE concerns (
    concern_id   uuid        PRIMARY KEY,
    subject_id   text,
    -- How to answer the person. It is personal data, but the person gave it
    -- for exactly this purpose, and it must stay readable to whoever answers.
    contact      text        NOT NULL,
    category     text        NOT NULL
                 CHECK (category IN ('misuse', 'unwanted_mail', 'wrong_data', 'disclosure', 'other')),
    description  text        NOT NULL,
    links        uuid[]      NOT NULL DEFAULT '{}',
    filed_at     timestamptz NOT NULL DEFAULT now(),
    filed_by     text        NOT NULL
);

CREATE INDEX concerns_subject ON concerns (subject_id) WHERE subject_id IS NOT NULL;
CREATE INDEX concerns_filed_at ON concerns (filed_at, concern_id);

-- Every status change, appended. The current status is the latest event;
-- nothing is overwritten, so the history shows who did what and when.
CREATE TABLE concern_events (
    concern_id   uuid        NOT NULL REFERENCES concerns (concern_id),
    sequence     bigint      GENERATED ALWAYS AS IDENTITY,
    status       text        NOT NULL CHECK (status IN ('filed', 'acknowledged', 'resolved')),
    outcome      text        CHECK (outcome IN ('fixed', 'no_violation', 'rejected')),
    resolution   text        NOT NULL DEFAULT '',
    actor        text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (concern_id, sequence),
    -- A resolution always says how it ended.
    CHECK ((status = 'resolved') = (outcome IS NOT NULL))
);

CREATE TRIGGER concern_events_append_only
    BEFORE UPDATE OR DELETE ON concern_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER concern_events_no_truncate
    BEFORE TRUNCATE ON concern_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
