-- Fewer checks per appended row (issue 12: import-refusals at 3x a plain
-- multi-row INSERT). Traced with auto_explain over one 10,000-id import
-- batch, a third of the call went to the foreign keys of consent_records
-- and consent_state (a query and a row lock per row, run by the
-- referential-integrity triggers), a tenth to the subjects' feed-number
-- row trigger, and a seventh to making chain heads that the same
-- statement then moved. Nothing here changes what is hashed or what the
-- feed carries.

-- 1. consent_records and consent_state lose their foreign keys to
-- subjects. What each key guarded is kept another way:
-- - A record names a registered subject: every path that appends one finds
--   its subject first (the ledger's row trigger, below, and the set-wise
--   functions), and a row whose subject is missing gets no chain position
--   and is refused.
-- - The subject cannot be renamed under a record being written: every
--   path locks the subject row (FOR KEY SHARE, as the key's check did, or
--   stronger), and an erasure renames only under FOR UPDATE.
-- - The rename reaches the history: the erasure renames both tables itself
--   (section 3) instead of through ON UPDATE CASCADE.
-- consent_state is written only by its trigger, from appended records.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT c.conname, c.conrelid::regclass AS child
          FROM pg_constraint c
         WHERE c.contype = 'f' AND c.confrelid = 'subjects'::regclass
           AND c.conrelid IN ('consent_records'::regclass, 'consent_state'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.child, fk.conname);
    END LOOP;
END;
$$;

-- 2. The ledger's row trigger (every append outside the set-wise
-- functions) locks the subject as the key's check did: FOR KEY SHARE
-- blocks only an erasure, which waits for the record and then renames it.
CREATE OR REPLACE FUNCTION ledger_chain_consent_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    rest bytea;
BEGIN
    NEW.ledger_version := 2;
    NEW.text_erased := false;
    NEW.text_digest := ledger_consent_record_text(NEW);
    NEW.chain_seq := 0; -- any value: it must not be NULL, which encodes shorter
    rest := ledger_consent_record_rest(NEW);
    INSERT INTO ledger_heads AS h (subject_key, length, head)
    SELECT s.subject_key, 1, ledger_consent_record_hash(ledger_genesis(s.subject_key), 1, rest)
      FROM (SELECT subject_key FROM subjects WHERE subject_id = NEW.subject_id FOR KEY SHARE) s
    ON CONFLICT (subject_key) DO UPDATE
       SET length = h.length + 1,
           head = ledger_consent_record_hash(h.head, h.length + 1, rest)
    RETURNING h.length, h.head INTO NEW.chain_seq, NEW.hash;
    IF NEW.chain_seq IS NULL THEN
        RAISE EXCEPTION 'subject % is not registered', NEW.subject_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- 3. Erasure renames the history and the current state itself. One UPDATE
-- per table: the history's rows take the pseudonym and lose their free
-- text in one new version each.
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
    -- A row erased before keeps its blanks: setting them again changes
    -- nothing the guard (V10) minds.
    UPDATE consent_records
       SET subject_id = p_pseudonym, evidence = '', text_erased = true,
           -- A v1 row hashes its request id: blanking it would break the chain.
           request_id = CASE WHEN ledger_version >= 2 THEN NULL ELSE request_id END
     WHERE subject_id = p_subject;
    UPDATE consent_state SET subject_id = p_pseudonym WHERE subject_id = p_subject;
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

-- 4. The feed-number row trigger on subjects stands aside for a bulk
-- registration, as the ledger's row trigger does (V12): only the owner
-- with `consentd.bulk_append` on, that is a set-wise function, which draws
-- the numbers itself after taking a transaction id.
DO $$
BEGIN
    EXECUTE 'DROP TRIGGER subjects_feed_number ON subjects';
    EXECUTE format(
        'CREATE TRIGGER subjects_feed_number BEFORE INSERT ON subjects FOR EACH ROW
         WHEN (current_setting(''consentd.bulk_append'', true) IS DISTINCT FROM ''on''
               OR current_user <> %L)
         EXECUTE FUNCTION feed_number_row()',
        (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'subjects'::regclass));
END;
$$;

-- 5. The import's batch, with what it registers written once: a subject
-- this batch registers has no chain head and no current choice, and nobody
-- else can see it before the batch commits, so its record chains from the
-- genesis and its head is made once, already moved. Only subjects
-- registered before are locked, looked up and chained from a locked head.
CREATE OR REPLACE FUNCTION consentd_import_refusals(
    p_subjects text[], p_purpose text, p_field text, p_notice_version text, p_evidence text,
    p_actor text, OUT registered bigint, OUT refused bigint
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
SET consentd.bulk_append = 'on'
AS $$
DECLARE
    numbers regclass := pg_get_serial_sequence('consent_records', 'sequence');
    -- Every record of the batch has the same free text, so the same digest.
    digest bytea := sha256(ledger_text(p_evidence) || ledger_text(NULL));
    -- The parts of each record's encoding that every record of the batch
    -- shares (ledger_consent_record_encoding, v2), encoded once.
    same bytea := ledger_text(p_purpose) || ledger_text(p_field) || ledger_text('')
                  || ledger_text('refuse') || ledger_text('import') || ledger_text(p_notice_version)
                  || ledger_text(p_actor) || ledger_text(NULL);
    same_digest bytea := ledger_field(digest);
    ids text[];
    fresh_ids text[];
    fresh_keys uuid[];
    old_ids text[];
    old_keys uuid[];
    gone text[];
BEGIN
    -- A transaction id before any sequence number: see the change feed.
    PERFORM pg_current_xact_id();
    -- Each subject once, in the order of its first line.
    ids := ARRAY(SELECT u.id FROM unnest(p_subjects) WITH ORDINALITY AS u (id, pos)
                  GROUP BY u.id ORDER BY min(u.pos));

    -- 1. The unknown ones, registered with their feed numbers. ON CONFLICT
    -- covers a registration that commits meanwhile: that subject is then
    -- one registered before, handled in step 2.
    WITH made AS (
        INSERT INTO subjects AS s (subject_id, kind, notice_version, channel, sequence)
        SELECT u.id, 'individual', p_notice_version, 'import', nextval(numbers)
          FROM unnest(ids) AS u (id)
         WHERE NOT EXISTS (SELECT 1 FROM subjects x WHERE x.subject_id = u.id)
        ON CONFLICT (subject_id) DO NOTHING
        RETURNING s.subject_id, s.subject_key)
    SELECT array_agg(m.subject_id), array_agg(m.subject_key) INTO fresh_ids, fresh_keys FROM made m;

    -- 2. The ones registered before whose current choice is not a refusal
    -- already, each locked FOR KEY SHARE in the order of their ids: an
    -- erasure (which renames under FOR UPDATE) waits for this batch, or
    -- this batch for it. Probes one by one, LATERAL and OFFSET 0, so that
    -- a fresh table's missing statistics cannot make them a scan each.
    SELECT array_agg(o.id ORDER BY o.id) FILTER (WHERE o.todo),
           array_agg(o.subject_key ORDER BY o.id) FILTER (WHERE o.todo),
           array_agg(o.id) FILTER (WHERE o.subject_key IS NULL)
      INTO old_ids, old_keys, gone
      FROM (SELECT u.id, l.subject_key,
                   l.subject_key IS NOT NULL
                   AND (SELECT c.choice FROM consent_state c
                         WHERE c.subject_id = u.id AND c.purpose = p_purpose
                           AND c.field = p_field) IS DISTINCT FROM 'refuse' AS todo
              FROM (SELECT u.id FROM unnest(ids) AS u (id)
                      LEFT JOIN unnest(fresh_ids) AS f (id) USING (id)
                     WHERE f.id IS NULL ORDER BY u.id) u
              LEFT JOIN LATERAL (SELECT s.subject_key FROM subjects s WHERE s.subject_id = u.id
                                 OFFSET 0 FOR KEY SHARE) l ON true) o;
    -- An id that an erasure renamed while the lock waited is no longer
    -- registered: it is registered anew, as step 1 would have done. (One
    -- that another registration takes meanwhile gets no refusal from this
    -- batch; running the import again writes it.)
    IF gone IS NOT NULL THEN
        WITH made AS (
            INSERT INTO subjects AS s (subject_id, kind, notice_version, channel, sequence)
            SELECT u.id, 'individual', p_notice_version, 'import', nextval(numbers)
              FROM unnest(gone) AS u (id)
            ON CONFLICT (subject_id) DO NOTHING
            RETURNING s.subject_id, s.subject_key)
        SELECT fresh_ids || array_agg(m.subject_id), fresh_keys || array_agg(m.subject_key)
          INTO fresh_ids, fresh_keys FROM made m;
    END IF;
    registered := coalesce(cardinality(fresh_ids), 0);

    -- 3. Their heads, made on a first append before any head is locked.
    IF old_keys IS NOT NULL THEN
        INSERT INTO ledger_heads (subject_key, length, head)
        SELECT k, 0, ledger_genesis(k) FROM unnest(old_keys) AS k
         WHERE NOT EXISTS (SELECT 1 FROM ledger_heads x WHERE x.subject_key = k)
         ORDER BY k
        ON CONFLICT (subject_key) DO NOTHING;
    END IF;

    -- 4. Every record: sequence numbers in the order of the lines, each
    -- chained from its head (the genesis for a subject made in step 1), and
    -- each head written once, at its new place (made with a plain INSERT
    -- for a new subject: it has none, and nobody else can make one).
    WITH locked AS (
        SELECT h.subject_key, h.length, h.head
          FROM (SELECT k FROM unnest(old_keys) AS k ORDER BY k) u,
               LATERAL (SELECT x.subject_key, x.length, x.head FROM ledger_heads x
                         WHERE x.subject_key = u.k OFFSET 0 FOR UPDATE) h
    ), todo AS (
        SELECT f.id, f.subject_key, 0::bigint AS length, ledger_genesis(f.subject_key) AS head,
               true AS fresh
          FROM unnest(fresh_ids, fresh_keys) AS f (id, subject_key)
        UNION ALL
        SELECT o.id, o.subject_key, l.length, l.head, false
          FROM unnest(old_ids, old_keys) AS o (id, subject_key)
          JOIN locked l USING (subject_key)
    ), drawn AS (
        SELECT t.id, t.subject_key, t.length + 1 AS chain_seq, t.head, t.fresh,
               nextval(numbers) AS sequence,
               gen_random_uuid() AS record_id, clock_timestamp() AS recorded_at
          FROM todo t JOIN unnest(ids) WITH ORDINALITY AS b (id, at) USING (id)
         ORDER BY b.at
    ), hashed AS MATERIALIZED (
        SELECT d.*, ledger_consent_record_hash(d.head, d.chain_seq,
                   ledger_uuid(d.record_id) || ledger_int(d.sequence) || same
                   || ledger_time(d.recorded_at) || same_digest) AS hash
          FROM drawn d
    ), appended AS (
        INSERT INTO consent_records (subject_id, sequence, record_id, purpose, field, choice,
                                     channel, notice_version, evidence, actor, recorded_at,
                                     chain_seq, text_digest, hash, ledger_version, text_erased)
        OVERRIDING SYSTEM VALUE
        SELECT id, sequence, record_id, p_purpose, p_field, 'refuse', 'import', p_notice_version,
               p_evidence, p_actor, recorded_at, chain_seq, digest, hash, 2, false
          FROM hashed ORDER BY sequence
        RETURNING 1
    ), made_heads AS (
        INSERT INTO ledger_heads (subject_key, length, head)
        SELECT x.subject_key, x.chain_seq, x.hash FROM hashed x WHERE x.fresh
    ), moved_heads AS (
        INSERT INTO ledger_heads AS h (subject_key, length, head)
        SELECT x.subject_key, x.chain_seq, x.hash FROM hashed x WHERE NOT x.fresh
        ON CONFLICT (subject_key) DO UPDATE SET length = EXCLUDED.length, head = EXCLUDED.head
    )
    SELECT count(*) INTO refused FROM appended;
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_import_refusals(text[], text, text, text, text, text) FROM PUBLIC;

DROP FUNCTION consentd_import_todo(text[], text, text);
