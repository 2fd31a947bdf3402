-- Cheaper appends to the consent history (issue 12). Profiled on a batch of
-- 10,000 imported refusals, each record cost about 90 us inside PostgreSQL:
-- the ledger trigger about 60 (of which the encoding 22: its helpers were
-- not inlined, and the chain head took three statements), the consent_state
-- trigger about 15, the foreign key 4, the row and its indexes the rest.
-- Nothing here changes what is hashed: `consentd verify` (src/ledger/)
-- recomputes the same bytes as before.

-- 1. The encoding helpers call convert_to and extract, which are STABLE.
-- PostgreSQL inlines a SQL function only when its body is no more volatile
-- than the function says, so these IMMUTABLE ones ran through the SQL
-- function executor, once per field of every row. Declared STABLE (which is
-- what they are) they inline into one expression.
ALTER FUNCTION ledger_text(text) STABLE;
ALTER FUNCTION ledger_time(timestamptz) STABLE;
ALTER FUNCTION ledger_texts(text[]) STABLE;
ALTER FUNCTION ledger_genesis(uuid) STABLE;
ALTER FUNCTION ledger_consent_record_encoding(consent_records) STABLE;
ALTER FUNCTION ledger_consent_record_text(consent_records) STABLE;
ALTER FUNCTION ledger_disclosure_encoding(disclosures) STABLE;
ALTER FUNCTION ledger_disclosure_text(disclosures) STABLE;
ALTER FUNCTION ledger_disclosure_event_encoding(disclosure_events) STABLE;

-- The encoding of a consent record is its kind, its chain position, then
-- the rest. The position is always 12 bytes (4 of length, 8 of value), so
-- the rest can be encoded before the position is known (any non-NULL
-- position will do: NULL would encode shorter).
CREATE FUNCTION ledger_consent_record_rest(r consent_records) RETURNS bytea
LANGUAGE sql STABLE AS $$ SELECT substr(ledger_consent_record_encoding(r), 31) $$;

CREATE FUNCTION ledger_consent_record_hash(head bytea, chain_seq bigint, rest bytea) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(head || ledger_text('consent_record') || ledger_int(chain_seq) || rest)
$$;

-- 2. The chain head in one statement instead of three (create, lock, move):
-- the upsert locks the head row as SELECT ... FOR UPDATE did, so appends for
-- one subject still take turns and chain in commit order.
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
      FROM subjects s WHERE s.subject_id = NEW.subject_id
    ON CONFLICT (subject_key) DO UPDATE
       SET length = h.length + 1,
           head = ledger_consent_record_hash(h.head, h.length + 1, rest)
    -- No such subject: chain_seq stays NULL and the row is refused, as before.
    RETURNING h.length, h.head INTO NEW.chain_seq, NEW.hash;
    RETURN NEW;
END;
$$;

-- 3. consent_state follows the history once per statement, from the rows
-- the statement appended, instead of once per row. Of several records for
-- one (subject, purpose, field) in a statement, the newest wins, as it did
-- row by row. Still SECURITY DEFINER: the serving role cannot write
-- consent_state any other way.
CREATE FUNCTION consent_state_follow_records() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO consent_state (subject_id, purpose, field, choice, record_id, sequence, recorded_at)
    SELECT DISTINCT ON (subject_id, purpose, field)
           subject_id, purpose, field, choice, record_id, sequence, recorded_at
      FROM appended
     WHERE recipient = ''
     ORDER BY subject_id, purpose, field, sequence DESC
    ON CONFLICT (subject_id, purpose, field) DO UPDATE
       SET choice = EXCLUDED.choice, record_id = EXCLUDED.record_id,
           sequence = EXCLUDED.sequence, recorded_at = EXCLUDED.recorded_at
     WHERE consent_state.sequence < EXCLUDED.sequence;
    RETURN NULL;
END;
$$;

DROP TRIGGER consent_records_state ON consent_records;
CREATE TRIGGER consent_records_state
    AFTER INSERT ON consent_records REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION consent_state_follow_records();
DROP FUNCTION consent_state_follow_record();

-- 4. A bulk append of refusals (`import-refusals`), chained set-wise. Row by
-- row, each record runs the ledger trigger's statements; here one batch
-- locks its heads, draws its sequence numbers, hashes and inserts its
-- records, and moves its heads in a few statements. The function runs as the
-- owner with `consentd.bulk_append` on, and only then does the row trigger
-- stand aside: its WHEN asks for both, so a session that sets the variable
-- itself is still chained row by row (it is not the owner, and the owner
-- could drop the trigger anyway).
DO $$
BEGIN
    EXECUTE 'DROP TRIGGER consent_records_ledger ON consent_records';
    EXECUTE format(
        'CREATE TRIGGER consent_records_ledger BEFORE INSERT ON consent_records FOR EACH ROW
         WHEN (current_setting(''consentd.bulk_append'', true) IS DISTINCT FROM ''on''
               OR current_user <> %L)
         EXECUTE FUNCTION ledger_chain_consent_record()',
        (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'consent_records'::regclass));
END;
$$;

-- The subjects of a batch (each once, at its first position) whose current
-- choice for the purpose and field is not a refusal, with their keys.
CREATE FUNCTION consentd_import_todo(p_subjects text[], p_purpose text, p_field text)
RETURNS TABLE (id text, first_at bigint, subject_key uuid)
LANGUAGE sql STABLE AS $$
    SELECT b.id, b.first_at, b.subject_key
      FROM (SELECT u.id, min(u.position) AS first_at,
                   (SELECT s.subject_key FROM subjects s WHERE s.subject_id = u.id) AS subject_key,
                   (SELECT c.choice FROM consent_state c
                     WHERE c.subject_id = u.id AND c.purpose = p_purpose AND c.field = p_field)
                       AS choice
              FROM unnest(p_subjects) WITH ORDINALITY AS u (id, position)
             GROUP BY u.id) b
     WHERE b.choice IS DISTINCT FROM 'refuse' AND b.subject_key IS NOT NULL
$$;
REVOKE EXECUTE ON FUNCTION consentd_import_todo(text[], text, text) FROM PUBLIC;

-- Registers the unknown subjects of `p_subjects` and appends a refusal for
-- each whose current choice for the purpose and field is not one already,
-- in the order of first appearance. Each subject gets at most one record,
-- so each record's chain position is its head's length plus one.
CREATE FUNCTION consentd_import_refusals(
    p_subjects text[], p_purpose text, p_field text, p_notice_version text, p_evidence text,
    p_actor text, OUT registered bigint, OUT refused bigint
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
SET consentd.bulk_append = 'on'
AS $$
DECLARE
    digest bytea;
BEGIN
    -- A transaction id before any sequence number: see the change feed.
    PERFORM pg_current_xact_id();
    INSERT INTO subjects (subject_id, kind, notice_version, channel)
    SELECT DISTINCT id, 'individual', p_notice_version, 'import' FROM unnest(p_subjects) id
    ON CONFLICT (subject_id) DO NOTHING;
    GET DIAGNOSTICS registered = ROW_COUNT;

    -- Heads for first appends, in a statement of their own so that the
    -- locking read below sees them (and any a concurrent writer made).
    -- Lookups are scalar subqueries, each one primary-key probe, so that a
    -- fresh table's missing statistics cannot turn them into a scan per row.
    INSERT INTO ledger_heads (subject_key, length, head)
    SELECT t.subject_key, 0, ledger_genesis(t.subject_key)
      FROM consentd_import_todo(p_subjects, p_purpose, p_field) t
    ON CONFLICT (subject_key) DO NOTHING;

    -- Every record of the batch has the same free text, so the same digest.
    digest := sha256(ledger_text(p_evidence) || ledger_text(NULL));

    WITH todo AS (
        SELECT * FROM consentd_import_todo(p_subjects, p_purpose, p_field)
    ), locked AS (
        SELECT h.subject_key, h.length, h.head
          FROM todo t JOIN ledger_heads h ON h.subject_key = t.subject_key
         ORDER BY h.subject_key
           FOR UPDATE OF h
    ), drawn AS (
        SELECT t.id, t.subject_key, l.length + 1 AS chain_seq, l.head,
               nextval(pg_get_serial_sequence('consent_records', 'sequence')) AS sequence,
               gen_random_uuid() AS record_id, clock_timestamp() AS recorded_at
          FROM todo t JOIN locked l USING (subject_key)
         ORDER BY t.first_at
    ), hashed AS (
        SELECT d.*, ledger_consent_record_hash(d.head, d.chain_seq,
                   ledger_uuid(d.record_id) || ledger_int(d.sequence) || ledger_text(p_purpose)
                   || ledger_text(p_field) || ledger_text('') || ledger_text('refuse')
                   || ledger_text('import') || ledger_text(p_notice_version)
                   || ledger_text(p_actor) || ledger_text(NULL) || ledger_time(d.recorded_at)
                   || ledger_field(digest)) AS hash
          FROM drawn d
    ), appended AS (
        INSERT INTO consent_records (subject_id, sequence, record_id, purpose, field, choice,
                                     channel, notice_version, evidence, actor, recorded_at,
                                     chain_seq, text_digest, hash, ledger_version, text_erased)
        OVERRIDING SYSTEM VALUE
        SELECT id, sequence, record_id, p_purpose, p_field, 'refuse', 'import', p_notice_version,
               p_evidence, p_actor, recorded_at, chain_seq, digest, hash, 2, false
          FROM hashed ORDER BY sequence
    )
    UPDATE ledger_heads h SET length = x.chain_seq, head = x.hash
      FROM hashed x WHERE h.subject_key = x.subject_key;
    GET DIAGNOSTICS refused = ROW_COUNT;
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_import_refusals(text[], text, text, text, text, text) FROM PUBLIC;

-- The serving role may import too: it could append the same refusals one
-- INSERT at a time.
ALTER FUNCTION consentd_grant_serving(name) RENAME TO consentd_grant_serving_before_v12;
CREATE FUNCTION consentd_grant_serving(serving name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM consentd_grant_serving_before_v12(serving);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
                    consentd_import_refusals(text[], text, text, text, text, text) TO %I', serving);
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_grant_serving(name) FROM PUBLIC;
