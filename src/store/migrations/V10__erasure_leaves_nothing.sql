-- Erasure that leaves nothing that points back (issue 11).
--
-- Until now an erased person's free text (evidence, references,
-- justifications, notes, concern texts) and request ids stayed in the
-- history, and so did the idempotency keys of their calls. Erasure now blanks
-- or deletes all of them; the chain must stay verifiable afterwards.

-- 1. The chain. The request id was hashed as it is (V6), so blanking it
-- would break the chain. Rows written from now on follow encoding v2: the
-- request id joins the free text in `text_digest`, and its place in the
-- encoding holds none. Rows written before keep v1, which their hashes
-- record; erasure leaves their request id (see consentd_erase_subject).
-- `text_erased` marks a row whose free text erasure blanked: verify then
-- checks that the text is blank instead of comparing it with its digest.
ALTER TABLE consent_records
    ADD COLUMN ledger_version smallint NOT NULL DEFAULT 1,
    ADD COLUMN text_erased    boolean  NOT NULL DEFAULT false;
ALTER TABLE consent_records ALTER COLUMN ledger_version SET DEFAULT 2;
ALTER TABLE disclosures
    ADD COLUMN ledger_version smallint NOT NULL DEFAULT 1,
    ADD COLUMN text_erased    boolean  NOT NULL DEFAULT false;
ALTER TABLE disclosures ALTER COLUMN ledger_version SET DEFAULT 2;
ALTER TABLE disclosure_events
    ADD COLUMN text_erased    boolean  NOT NULL DEFAULT false;

-- What the chain hashes of a row's free text.
CREATE FUNCTION ledger_consent_record_text(r consent_records) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(ledger_text(r.evidence)
        || CASE WHEN r.ledger_version >= 2 THEN ledger_text(r.request_id) ELSE ''::bytea END)
$$;

CREATE FUNCTION ledger_disclosure_text(r disclosures) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(ledger_text(r.reference) || ledger_text(r.justification)
        || CASE WHEN r.ledger_version >= 2 THEN ledger_text(r.request_id) ELSE ''::bytea END)
$$;

CREATE OR REPLACE FUNCTION ledger_consent_record_encoding(r consent_records) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_text('consent_record') || ledger_int(r.chain_seq) || ledger_uuid(r.record_id)
        || ledger_int(r.sequence) || ledger_text(r.purpose) || ledger_text(r.field)
        || ledger_text(r.recipient) || ledger_text(r.choice) || ledger_text(r.channel)
        || ledger_text(r.notice_version) || ledger_text(r.actor)
        || ledger_text(CASE WHEN r.ledger_version >= 2 THEN NULL ELSE r.request_id END)
        || ledger_time(r.recorded_at) || ledger_field(r.text_digest)
$$;

CREATE OR REPLACE FUNCTION ledger_disclosure_encoding(r disclosures) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_text('disclosure') || ledger_int(r.chain_seq) || ledger_uuid(r.disclosure_id)
        || ledger_text(r.recipient_id) || ledger_text(r.purpose) || ledger_text(r.legal_basis)
        || ledger_texts(r.fields) || ledger_texts(r.withheld) || ledger_text(r.status)
        || ledger_time(r.review_due) || ledger_text(r.requested_by)
        || ledger_text(CASE WHEN r.ledger_version >= 2 THEN NULL ELSE r.request_id END)
        || ledger_time(r.requested_at) || ledger_field(r.text_digest)
$$;

-- The append triggers, as in V6 and V9, with v2 forced: a writer cannot
-- choose the old encoding, nor insert a row marked as erased.
CREATE OR REPLACE FUNCTION ledger_chain_consent_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW; -- the foreign key refuses the row
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.ledger_version := 2;
    NEW.text_erased := false;
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := ledger_consent_record_text(NEW);
    NEW.hash := sha256(prev.chain_head || ledger_consent_record_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_chain_disclosure() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.ledger_version := 2;
    NEW.text_erased := false;
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := ledger_disclosure_text(NEW);
    NEW.hash := sha256(prev.chain_head || ledger_disclosure_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_chain_disclosure_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.text_erased := false;
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := sha256(ledger_text(NEW.note));
    NEW.hash := sha256(prev.chain_head || ledger_disclosure_event_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

-- 2. The guard: inside the erasure function, as the owner, a row may change
-- its subject_id and blank its erasable columns (free text, request id; the
-- erased mark may only turn true), and nothing else.
CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    erasable text[] := CASE TG_TABLE_NAME
        WHEN 'consent_records' THEN ARRAY['evidence', 'request_id', 'text_erased']
        WHEN 'disclosures' THEN ARRAY['reference', 'justification', 'request_id', 'text_erased']
        WHEN 'disclosure_events' THEN ARRAY['note', 'text_erased']
        WHEN 'collection_records' THEN ARRAY['request_id']
        WHEN 'concern_events' THEN ARRAY['resolution']
        ELSE ARRAY[]::text[]
    END;
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('consentd.erasure', true) = 'on'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
       AND to_jsonb(NEW) - erasable - 'subject_id' = to_jsonb(OLD) - erasable - 'subject_id'
       AND NOT EXISTS (
           SELECT 1 FROM jsonb_each(to_jsonb(NEW)) AS e (key, value)
            WHERE e.key = ANY (erasable)
              AND e.value IS DISTINCT FROM to_jsonb(OLD) -> e.key
              AND e.value NOT IN ('null'::jsonb, '""'::jsonb, 'true'::jsonb)) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- 3. Idempotency keys name their subject by its internal key (never the
-- external id), so that erasure can delete them. Keys claimed before now are
-- traced through the rows they produced.
ALTER TABLE idempotency_keys ADD COLUMN subject_key uuid;
CREATE INDEX idempotency_keys_subject ON idempotency_keys (subject_key) WHERE subject_key IS NOT NULL;
UPDATE idempotency_keys k SET subject_key = s.subject_key
  FROM consent_records r JOIN subjects s USING (subject_id)
 WHERE r.request_id = k.request_id AND k.subject_key IS NULL;
UPDATE idempotency_keys k SET subject_key = s.subject_key
  FROM disclosures d JOIN subjects s USING (subject_id)
 WHERE d.request_id = k.request_id AND k.subject_key IS NULL;
UPDATE idempotency_keys k SET subject_key = s.subject_key
  FROM collection_records c JOIN subjects s USING (subject_id)
 WHERE c.request_id = k.request_id AND k.subject_key IS NULL;
UPDATE idempotency_keys k SET subject_key = s.subject_key
  FROM concerns c JOIN subjects s USING (subject_id)
 WHERE c.concern_id::text = k.result_ref AND k.subject_key IS NULL;

-- A registration claims its key before its subject exists, and names it
-- once it does.
ALTER FUNCTION consentd_grant_serving(name) RENAME TO consentd_grant_serving_v9;
CREATE FUNCTION consentd_grant_serving(serving name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM consentd_grant_serving_v9(serving);
    EXECUTE format('GRANT UPDATE (subject_key) ON idempotency_keys TO %I', serving);
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_grant_serving(name) FROM PUBLIC;

-- 4. Erasure, all of it. Blanks before the rename, so each UPDATE is one
-- kind of change the guard recognises.
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
    INSERT INTO erasure_events (pseudonym, record_sequences, record_purposes)
    SELECT p_pseudonym, coalesce(array_agg(sequence ORDER BY sequence), '{}'),
                        coalesce(array_agg(purpose ORDER BY sequence), '{}')
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
