-- Append-only as a real boundary (issue 11).
--
-- Migrations run as the owner role: the user of `--database-url`, which owns
-- every table. The server serves as a separate serving role (`--serving-role`,
-- see src/store/roles.rs) that owns nothing and gets, from
-- consentd_grant_serving below, INSERT and SELECT on the histories and what
-- it needs on the mutable tables. Not owning a table, it cannot ALTER it
-- (DISABLE TRIGGER) or TRUNCATE it; without UPDATE and DELETE it cannot
-- rewrite the history at all. The triggers stay as a second wall, which the
-- owner meets too.
--
-- What a serving session must still be able to cause happens in functions
-- the owner owns (SECURITY DEFINER), each with its own search_path so that a
-- session cannot slip its own objects in:
-- - the current state (consent_state) follows each appended record, by a
--   trigger: it cannot be written any other way;
-- - the ledger triggers move the chain heads;
-- - an erasure rewrites exactly what erasure may rewrite.

-- The guard accepts the erasure rewrite only inside consentd_erase_subject:
-- that function turns `consentd.erasure` on for its own duration (its SET
-- clause), and runs as the owner. A session can set the variable itself, but
-- it is then still not the owner: the setting alone opens nothing. (The
-- cascade from subjects.subject_id also runs as the owner: PostgreSQL runs
-- foreign key actions as the table's owner. The serving role has no UPDATE
-- on subject_id, so only the function starts one.)
CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('consentd.erasure', true) = 'on'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
       AND to_jsonb(NEW) - 'subject_id' = to_jsonb(OLD) - 'subject_id' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- The checkpoint tables refused UPDATE and DELETE but not TRUNCATE.
CREATE TRIGGER ledger_checkpoints_no_truncate
    BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER ledger_checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON ledger_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- consent_state, which alone decides Check, follows the history: each record
-- without a recipient (those decide disclosures only, read from the history)
-- becomes the current choice for its (subject, purpose, field) unless a
-- newer one is there already. Every writer (the API, the import, the
-- refusals carried over an erasure) goes through here, and the serving role
-- has SELECT only.
CREATE FUNCTION consent_state_follow_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO consent_state (subject_id, purpose, field, choice, record_id, sequence, recorded_at)
    VALUES (NEW.subject_id, NEW.purpose, NEW.field, NEW.choice, NEW.record_id, NEW.sequence,
            NEW.recorded_at)
    ON CONFLICT (subject_id, purpose, field) DO UPDATE
       SET choice = EXCLUDED.choice, record_id = EXCLUDED.record_id,
           sequence = EXCLUDED.sequence, recorded_at = EXCLUDED.recorded_at
     WHERE consent_state.sequence < EXCLUDED.sequence;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consent_records_state
    AFTER INSERT ON consent_records
    FOR EACH ROW WHEN (NEW.recipient = '')
    EXECUTE FUNCTION consent_state_follow_record();

-- The chain heads move as the owner: the serving role has no privilege on
-- ledger_heads at all, so it cannot rewind a chain's head.
ALTER FUNCTION ledger_chain_consent_record() SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION ledger_chain_disclosure() SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION ledger_chain_disclosure_event() SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION ledger_lock_head(uuid) FROM PUBLIC;

-- Erasure: the external id leaves every row. Values and the concern contact
-- are deleted or blanked; every row keyed by the subject is renamed to the
-- pseudonym by one cascading update of subjects.subject_id; the keyed hash
-- goes on the suppression list. Returns when the erasure happened, or NULL
-- when no subject has the id.
CREATE FUNCTION consentd_erase_subject(
    p_subject text, p_hash bytea, p_pseudonym text, p_actor text
) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
SET consentd.erasure = 'on'
AS $$
DECLARE
    erased timestamptz;
BEGIN
    PERFORM 1 FROM subjects WHERE subject_id = p_subject FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM personal_data WHERE subject_id = p_subject;
    UPDATE concerns SET subject_id = p_pseudonym, contact = '(erased)' WHERE subject_id = p_subject;
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

-- What the serving role may do, table by table. Called by the owner at every
-- start (src/store/roles.rs), so that the role's privileges are exactly
-- these even after a migration added a table or someone granted more by
-- hand. A table missing here is one the server cannot use: that fails
-- loudly, never silently open.
CREATE FUNCTION consentd_grant_serving(serving name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    -- Replicas starting at once would otherwise collide on the catalog rows.
    PERFORM pg_advisory_xact_lock(hashtext('consentd_grant_serving'));
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', serving);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I', serving);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM %I', serving);
    -- The histories: appended and read, never changed.
    FOREACH t IN ARRAY ARRAY['consent_records', 'collection_records', 'disclosures',
                             'disclosure_events', 'concerns', 'concern_events',
                             'access_events', 'ledger_checkpoints', 'ledger_checkpoint_heads',
                             'erasure_events'] LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT, INSERT ON %I TO %I', t, serving);
        END IF;
    END LOOP;
    -- Read only: written by the owner's functions.
    FOREACH t IN ARRAY ARRAY['consent_state', 'erased_subjects', 'ledger_heads'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO %I', t, serving);
    END LOOP;
    -- Mutable, within limits: a subject's own id and key never change here.
    EXECUTE format('GRANT SELECT, INSERT ON subjects TO %I', serving);
    EXECUTE format('GRANT UPDATE (kind, notice_version, channel, updated_at) ON subjects TO %I',
                   serving);
    EXECUTE format('GRANT SELECT, INSERT ON personal_data TO %I', serving);
    EXECUTE format('GRANT UPDATE (key_id, nonce, ciphertext, collected_for, collected_at, verified_at)
                    ON personal_data TO %I', serving);
    EXECUTE format('GRANT SELECT, INSERT ON idempotency_keys TO %I', serving);
    EXECUTE format('GRANT UPDATE (result_ref) ON idempotency_keys TO %I', serving);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ledger_checkpointed TO %I', serving);
    -- Checkpoints take their id from the sequence before inserting.
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO %I', serving);
    EXECUTE format('GRANT EXECUTE ON FUNCTION consentd_erase_subject(text, bytea, text, text) TO %I',
                   serving);
END;
$$;
REVOKE EXECUTE ON FUNCTION consentd_grant_serving(name) FROM PUBLIC;
