-- Erasure events on the change feed (WatchChanges), so that a mailer which
-- copied records from the feed learns that their person was erased and
-- drops its copy.
--
-- An event holds nothing that points back to the person: no external id and
-- no keyed hash of it, only the pseudonym the history now carries and the
-- sequences of the person's consent records, which is how a feed reader
-- finds what it holds about them. A re-registered person who is erased
-- again gets a second event, naming only the records of their second life.
--
-- `sequence` is drawn from the same sequence as consent_records.sequence, so
-- the feed reads both tables in one order, with one cursor and the same gap
-- rules: the erasing transaction has an id (it locked the subject) before it
-- draws the number, as every feed writer must.
CREATE TABLE erasure_events (
    sequence          bigint      PRIMARY KEY,
    pseudonym         text        NOT NULL,
    erased_at         timestamptz NOT NULL DEFAULT now(),
    -- The erased person's consent records, ascending, and the purpose of
    -- each (same index): a stream filtered by purpose is sent only the
    -- sequences it could have received.
    record_sequences  bigint[]    NOT NULL,
    record_purposes   text[]      NOT NULL,
    CHECK (cardinality(record_sequences) = cardinality(record_purposes))
);

DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE erasure_events ALTER COLUMN sequence SET DEFAULT nextval(%L::regclass)',
        pg_get_serial_sequence('consent_records', 'sequence'));
END;
$$;

CREATE TRIGGER erasure_events_append_only
    BEFORE UPDATE OR DELETE ON erasure_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER erasure_events_no_truncate
    BEFORE TRUNCATE ON erasure_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
