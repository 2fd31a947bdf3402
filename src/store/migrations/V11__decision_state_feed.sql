-- The decision state in memory (issue 12) is kept fresh from the change
-- feed, so everything a decision reads must reach the feed, in the one
-- sequence order: registrations and the stored fields' ages join the
-- consent records and erasure events.
--
-- Every writer of these rows must have a transaction id before it draws its
-- number (the feed's gap rules, V2): the triggers below take one first, so
-- no code path can forget it.

-- 1. A registration's place in the feed. A repeated registration keeps its
-- number: the trigger is on INSERT only, and the row an ON CONFLICT DO
-- UPDATE changes keeps its columns.
ALTER TABLE subjects ADD COLUMN sequence bigint;
-- 2. A stored field's latest change (collection, verification, rotation).
ALTER TABLE personal_data ADD COLUMN sequence bigint;
-- 3. Which registration an erasure ended: memory drops that subject by it,
-- without the event naming the person.
ALTER TABLE erasure_events ADD COLUMN registration_sequence bigint;

DO $do$
DECLARE
    seq text := pg_get_serial_sequence('consent_records', 'sequence');
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION feed_number_row() RETURNS trigger
        LANGUAGE plpgsql AS $b$
        BEGIN
            PERFORM pg_current_xact_id();
            NEW.sequence := nextval(%L::regclass);
            RETURN NEW;
        END;
        $b$$f$, seq);
    EXECUTE format('UPDATE subjects SET sequence = nextval(%L::regclass)', seq);
    EXECUTE format('UPDATE personal_data SET sequence = nextval(%L::regclass)', seq);
END;
$do$;

ALTER TABLE subjects ALTER COLUMN sequence SET NOT NULL;
ALTER TABLE personal_data ALTER COLUMN sequence SET NOT NULL;
CREATE UNIQUE INDEX subjects_sequence ON subjects (sequence);
CREATE UNIQUE INDEX personal_data_sequence ON personal_data (sequence);
-- The state load leaves out subjects an erasure renamed.
CREATE INDEX erasure_events_pseudonym ON erasure_events (pseudonym);

CREATE TRIGGER subjects_feed_number
    BEFORE INSERT ON subjects
    FOR EACH ROW EXECUTE FUNCTION feed_number_row();
CREATE TRIGGER personal_data_feed_number
    BEFORE INSERT OR UPDATE ON personal_data
    FOR EACH ROW EXECUTE FUNCTION feed_number_row();

-- 4. Erasure names the registration it ended (the rest is V10's function).
CREATE OR REPLACE FUNCTION consentd_erase_subject(
    p_subject text, p_hash bytea, p_pseudonym text, p_actor text
) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
SET consentd.erasure = 'on'
AS $$
DECLARE
    erased timestamptz;
BEGIN
    -- The caller may not choose what the history is renamed to: only a
    -- pseudonym of the form the server draws at random.
    IF p_pseudonym !~ '^erased-[0-9a-f]{24}$' THEN
        RAISE EXCEPTION 'not a pseudonym: %', p_pseudonym USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM subjects WHERE subject_id = p_subject FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The change feed's event, naming this life's records (read before the
    -- rename, so a re-registered person's earlier ones are not named
    -- again). The row lock above gave this transaction its id before the
    -- sequence is drawn, as the feed's gap rules need.
    INSERT INTO erasure_events (pseudonym, record_sequences, record_purposes,
                                registration_sequence)
    SELECT p_pseudonym, coalesce(array_agg(sequence ORDER BY sequence), '{}'),
                        coalesce(array_agg(purpose ORDER BY sequence), '{}'),
           (SELECT sequence FROM subjects WHERE subject_id = p_subject)
      FROM consent_records WHERE subject_id = p_subject;
    DELETE FROM personal_data WHERE subject_id = p_subject;
    -- The request ids and the keyed digests of the person's calls.
    DELETE FROM idempotency_keys
     WHERE subject_key = (SELECT subject_key FROM subjects WHERE subject_id = p_subject);
    UPDATE consent_records
       SET evidence = '', text_erased = true,
           -- A v1 row hashes its request id: blanking it would break the chain.
           request_id = CASE WHEN ledger_version >= 2 THEN NULL ELSE request_id END
     WHERE subject_id = p_subject AND NOT text_erased;
    UPDATE disclosures
       SET reference = NULL, justification = NULL, text_erased = true,
           request_id = CASE WHEN ledger_version >= 2 THEN NULL ELSE request_id END
     WHERE subject_id = p_subject AND NOT text_erased;
    UPDATE disclosure_events SET note = '', text_erased = true
     WHERE subject_id = p_subject AND NOT text_erased;
    UPDATE collection_records SET request_id = NULL
     WHERE subject_id = p_subject AND request_id IS NOT NULL;
    UPDATE concern_events SET resolution = ''
     WHERE resolution <> ''
       AND concern_id IN (SELECT concern_id FROM concerns WHERE subject_id = p_subject);
    UPDATE concerns
       SET subject_id = p_pseudonym, contact = '(erased)', description = '(erased)'
     WHERE subject_id = p_subject;
    UPDATE subjects SET subject_id = p_pseudonym WHERE subject_id = p_subject;
    INSERT INTO erased_subjects (subject_hash, pseudonym, erased_by)
    VALUES (p_hash, p_pseudonym, p_actor)
    ON CONFLICT (subject_hash) DO UPDATE
       SET pseudonym = EXCLUDED.pseudonym, erased_at = now(), erased_by = EXCLUDED.erased_by
    RETURNING erased_at INTO erased;
    RETURN erased;
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_erase_subject(text, bytea, text, text) FROM PUBLIC;
