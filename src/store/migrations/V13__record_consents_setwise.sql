-- RecordConsent's group commit in one call (issue 12). Until now a batch ran
-- one statement per record, each under its own savepoint, and each record
-- ran the ledger's row trigger (an upsert of its chain head and a SHA-256)
-- and the consent_state trigger for a statement of one row. Sampled under
-- load, the writers' backends spent about half their time on CPU in those
-- statements. Here a whole batch is a handful of statements, as
-- `consentd_import_refusals` (V12) does for an import: claim the request
-- ids, lock the subjects, lock the chain heads, draw the sequence numbers,
-- hash and insert every record, and move the heads. What is hashed does not
-- change: `consentd verify` recomputes the same bytes as before.

-- Appends the records given as parallel arrays (one element per record, in
-- the order to write them: the caller sorts them by subject so that batches
-- lock in one order) and answers one row per record, by its 1-based
-- position (`item`):
-- - 'created': appended; the row is the record.
-- - 'replayed': its request id was claimed before (by an earlier call, a
--   concurrent one the claim waited for, or an earlier record of this
--   batch) for the same content; the row is that call's record. The record
--   columns are NULL when the key names no record.
-- - 'reused': its request id was claimed for other content.
-- - 'not_found': the subject is not registered.
-- Each record gets the answer it would have had alone, as the single-record
-- path (src/store/consent.rs) decides it: the claim first, then the subject.
-- A key is claimed only for a registered subject, so a record that cannot be
-- written writes nothing.
CREATE FUNCTION consentd_record_consents(
    p_subjects text[], p_record_ids uuid[], p_purposes text[], p_fields text[],
    p_choices text[], p_channels text[], p_notices text[], p_evidence text[], p_actors text[],
    p_request_ids text[], p_recipients text[], p_digests bytea[]
)
RETURNS TABLE (
    item bigint, outcome text, subject_id text, sequence bigint, record_id uuid,
    purpose text, field text, choice text, channel text, notice_version text, evidence text,
    actor text, request_id text, recorded_at timestamptz, recipient text
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
-- The row trigger stands aside for the owner with this on (V12): the
-- records below arrive chained.
SET consentd.bulk_append = 'on'
-- Every statement's plan has one shape whatever the batch (each lookup is a
-- probe); planned anew at every call, as PostgreSQL chose to, they cost
-- about 0.5 ms a batch, more than a batch of one record takes to write.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    numbers regclass := pg_get_serial_sequence('consent_records', 'sequence');
    claimed_ids text[];
    claimed uuid[];
    writable text[];
    locked text[];
    go boolean[];
    keys uuid[];
    head_keys uuid[];
    lengths bigint[];
    heads bytea[];
BEGIN
    -- A transaction id before any sequence number: see the change feed.
    PERFORM pg_current_xact_id();

    -- Every lookup below is one primary-key probe per record (a scalar
    -- subquery, or a LATERAL one kept apart by OFFSET 0): joined, a table
    -- without statistics, or a cost model that expects disk reads, turns
    -- 128 probes into a scan of the whole table per statement.

    -- 1. The request ids, in their order (two batches claiming the same
    -- keys take turns, never deadlock). Of several records with one key,
    -- the first claims it; the others are answered from it below. The
    -- result (the record id) is known before the insert.
    WITH c AS (
        INSERT INTO idempotency_keys AS k (request_id, digest, subject_key, result_ref)
        SELECT DISTINCT ON (b.request_id) b.request_id, b.digest, b.subject_key, b.record_id::text
          FROM (SELECT u.*, (SELECT s.subject_key FROM subjects s
                              WHERE s.subject_id = u.subject_id) AS subject_key
                  FROM unnest(p_request_ids, p_digests, p_record_ids, p_subjects)
                       WITH ORDINALITY AS u (request_id, digest, record_id, subject_id, pos)
                 WHERE u.request_id IS NOT NULL
                 -- Keeps the filter below from copying the probe.
                OFFSET 0) b
         WHERE b.subject_key IS NOT NULL
         ORDER BY b.request_id, b.pos
        ON CONFLICT (request_id) DO NOTHING
        RETURNING k.request_id, k.result_ref)
    SELECT array_agg(c.request_id), array_agg(c.result_ref::uuid) INTO claimed_ids, claimed FROM c;

    -- 2. The subjects with a record to write (a replay writes nothing),
    -- locked in the order of their ids, as every writer of a record locks
    -- its subject first (an erasure waits for them; records of one subject
    -- commit in sequence order).
    -- (Joins with the claimed ids rather than `= ANY (claimed)`, which
    -- compares every record with every claim.)
    writable := ARRAY(
        SELECT DISTINCT b.subject_id
          FROM unnest(p_subjects, p_request_ids, p_record_ids) AS b (subject_id, request_id, record_id)
          LEFT JOIN unnest(claimed_ids, claimed) AS c (request_id, record_id)
               USING (request_id, record_id)
         WHERE b.request_id IS NULL OR c.record_id IS NOT NULL
         ORDER BY b.subject_id);
    SELECT array_agg(l.subject_id ORDER BY w.at), array_agg(l.subject_key ORDER BY w.at)
      INTO locked, keys
      FROM unnest(writable) WITH ORDINALITY AS w (subject_id, at),
           LATERAL (SELECT s.subject_id, s.subject_key FROM subjects s
                     WHERE s.subject_id = w.subject_id
                    OFFSET 0 FOR NO KEY UPDATE) l;

    -- Which records are written, by position: a locked subject, and a
    -- request id this batch claimed (or none).
    go := ARRAY(
        SELECT l.subject_id IS NOT NULL AND (b.request_id IS NULL OR c.record_id IS NOT NULL)
          FROM unnest(p_subjects, p_request_ids, p_record_ids)
               WITH ORDINALITY AS b (subject_id, request_id, record_id, pos)
          LEFT JOIN unnest(claimed_ids, claimed) AS c (request_id, record_id)
               USING (request_id, record_id)
          LEFT JOIN unnest(locked) AS l (subject_id) USING (subject_id)
         ORDER BY b.pos);

    -- A subject renamed by an erasure while its key was claimed is not
    -- written: its claim goes too, or a retry would replay a record that
    -- does not exist. Only a key this call claimed goes: the function runs
    -- as the owner, and the serving role may not delete keys.
    IF cardinality(writable) > coalesce(cardinality(locked), 0) THEN
        DELETE FROM idempotency_keys k
         USING unnest(p_request_ids, p_record_ids) WITH ORDINALITY AS b (request_id, record_id, pos),
               unnest(claimed_ids, claimed) AS c (request_id, record_id)
         WHERE c.request_id = b.request_id AND c.record_id = b.record_id AND NOT go[b.pos]
           AND k.request_id = c.request_id AND k.result_ref = c.record_id::text;
    END IF;

    -- 3. Their chain heads, made on a subject's first append, then locked
    -- and read in the order of their keys. Most subjects have a head
    -- already: the insert runs only when one is missing. (It runs before
    -- any head is locked: inserting while holding locks could deadlock
    -- with a batch that waits for them while holding a head just made.)
    IF EXISTS (SELECT 1 FROM unnest(keys) AS k
                WHERE NOT EXISTS (SELECT 1 FROM ledger_heads x WHERE x.subject_key = k)) THEN
        INSERT INTO ledger_heads (subject_key, length, head)
        SELECT k, 0, ledger_genesis(k) FROM unnest(keys) AS k ORDER BY k
        ON CONFLICT (subject_key) DO NOTHING;
    END IF;
    SELECT array_agg(h.subject_key ORDER BY h.subject_key), array_agg(h.length ORDER BY h.subject_key),
           array_agg(h.head ORDER BY h.subject_key)
      INTO head_keys, lengths, heads
      FROM (SELECT k FROM unnest(keys) AS k ORDER BY k) AS u,
           LATERAL (SELECT x.subject_key, x.length, x.head FROM ledger_heads x
                     WHERE x.subject_key = u.k OFFSET 0 FOR UPDATE) h;

    -- 4. Every record to write: a registered subject, and a request id it
    -- claimed (or none). Sequence numbers in the order given; each
    -- subject's records chain in that order from its head, one link per
    -- step of the recursion (most subjects have one record in a batch).
    RETURN QUERY
    WITH RECURSIVE todo AS (
        SELECT b.*, s.subject_key,
               row_number() OVER (PARTITION BY s.subject_key ORDER BY b.pos) AS link
          FROM unnest(p_subjects, p_record_ids, p_purposes, p_fields, p_choices, p_channels,
                      p_notices, p_evidence, p_actors, p_request_ids, p_recipients)
               WITH ORDINALITY AS b (subject_id, record_id, purpose, field, choice, channel,
                                     notice_version, evidence, actor, request_id, recipient, pos)
          JOIN unnest(locked, keys) AS s (subject_id, subject_key) USING (subject_id)
         WHERE go[b.pos]
    ), drawn AS MATERIALIZED (
        SELECT t.*, nextval(numbers) AS sequence, clock_timestamp() AS recorded_at,
               sha256(ledger_text(t.evidence) || ledger_text(t.request_id)) AS text_digest
          FROM todo t ORDER BY t.pos
    ), encoded AS MATERIALIZED (
        -- ledger_consent_record_encoding's fields after the chain position,
        -- for a v2 row: the request id enters only through text_digest.
        -- (Materialized columns: an argument that is an expression
        -- PostgreSQL would evaluate more than once keeps ledger_field from
        -- being inlined, and it then runs as a query of its own per row.)
        SELECT d.*,
               ledger_uuid(d.record_id) || ledger_int(d.sequence) || ledger_text(d.purpose)
               || ledger_text(d.field) || ledger_text(d.recipient) || ledger_text(d.choice)
               || ledger_text(d.channel) || ledger_text(d.notice_version)
               || ledger_text(d.actor) || ledger_text(NULL) || ledger_time(d.recorded_at)
               || ledger_field(d.text_digest) AS rest
          FROM drawn d
    ), chain AS (
        SELECT h.subject_key, 0::bigint AS link, h.length, h.head
          FROM unnest(head_keys, lengths, heads) AS h (subject_key, length, head)
        UNION ALL
        SELECT c.subject_key, e.link, c.length + 1,
               ledger_consent_record_hash(c.head, c.length + 1, e.rest)
          FROM chain c JOIN encoded e ON e.subject_key = c.subject_key AND e.link = c.link + 1
    ), appended AS (
        INSERT INTO consent_records AS r (subject_id, sequence, record_id, purpose, field, choice,
                                          channel, notice_version, evidence, actor, request_id,
                                          recorded_at, recipient, chain_seq, text_digest, hash,
                                          ledger_version, text_erased)
        OVERRIDING SYSTEM VALUE
        SELECT e.subject_id, e.sequence, e.record_id, e.purpose, e.field, e.choice, e.channel,
               e.notice_version, e.evidence, e.actor, e.request_id, e.recorded_at, e.recipient,
               c.length, e.text_digest, c.head, 2, false
          FROM encoded e JOIN chain c ON c.subject_key = e.subject_key AND c.link = e.link
         ORDER BY e.sequence
        RETURNING r.*
    ), moved AS (
        -- An upsert rather than an UPDATE ... FROM: its arbiter index makes
        -- each head one probe. Every head is there, locked in step 3.
        INSERT INTO ledger_heads AS h (subject_key, length, head)
        SELECT DISTINCT ON (c.subject_key) c.subject_key, c.length, c.head
          FROM chain c WHERE c.link > 0
         ORDER BY c.subject_key, c.link DESC
        ON CONFLICT (subject_key) DO UPDATE SET length = EXCLUDED.length, head = EXCLUDED.head
    )
    SELECT e.pos, 'created', a.subject_id, a.sequence, a.record_id, a.purpose, a.field, a.choice,
           a.channel, a.notice_version, a.evidence, a.actor, a.request_id, a.recorded_at,
           a.recipient
      FROM appended a JOIN encoded e ON e.record_id = a.record_id;

    -- 5. The records not written, from their key as it stands now (a
    -- statement of its own, so it sees a key that a concurrent call
    -- committed while the claim waited for it, and the keys this batch
    -- claimed), else their subject is not registered.
    RETURN QUERY
    SELECT b.pos,
           CASE WHEN k.request_id IS NULL THEN 'not_found'
                WHEN k.digest <> b.digest THEN 'reused'
                ELSE 'replayed' END,
           r.subject_id, r.sequence, r.record_id, r.purpose, r.field, r.choice, r.channel,
           r.notice_version, r.evidence, r.actor, r.request_id, r.recorded_at, r.recipient
      FROM unnest(p_request_ids, p_digests, p_record_ids, p_subjects)
           WITH ORDINALITY AS b (request_id, digest, record_id, subject_id, pos)
      LEFT JOIN idempotency_keys k ON k.request_id = b.request_id
      LEFT JOIN consent_records r
             ON k.digest = b.digest
            AND r.record_id = CASE WHEN k.result_ref ~ '^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$'
                                   THEN k.result_ref::uuid END
     WHERE NOT go[b.pos];
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_record_consents(text[], uuid[], text[], text[], text[], text[],
    text[], text[], text[], text[], text[], bytea[]) FROM PUBLIC;

-- The serving role writes its records through it: it could append the same
-- records one INSERT at a time.
ALTER FUNCTION consentd_grant_serving(name) RENAME TO consentd_grant_serving_before_v13;
CREATE FUNCTION consentd_grant_serving(serving name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM consentd_grant_serving_before_v13(serving);
    EXECUTE format('GRANT EXECUTE ON FUNCTION consentd_record_consents(text[], uuid[], text[],
                    text[], text[], text[], text[], text[], text[], text[], text[], bytea[]) TO %I',
                   serving);
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_grant_serving(name) FROM PUBLIC;
