-- Access events (GDPR Art. 15, PIPL Art. 45): every time a person downloaded
-- their own data from their page. ExportSubject lists them, so the person
-- (and an auditor) can see when the data left through that door.
--
-- Append-only like the other histories. An erasure renames subject_id
-- through the cascade (see V5), which the trigger allows while it runs.
CREATE TABLE access_events (
    access_id    uuid        PRIMARY KEY,
    subject_id   text        NOT NULL REFERENCES subjects (subject_id) ON UPDATE CASCADE,
    channel      text        NOT NULL CHECK (channel IN ('web', 'email_link', 'support', 'api', 'import')),
    -- The campaign of the letter whose link was followed; '' for none.
    campaign     text        NOT NULL DEFAULT '',
    accessed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX access_events_subject ON access_events (subject_id, accessed_at);

CREATE TRIGGER access_events_append_only
    BEFORE UPDATE OR DELETE ON access_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER access_events_no_truncate
    BEFORE TRUNCATE ON access_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
