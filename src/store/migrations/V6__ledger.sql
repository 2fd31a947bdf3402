-- A tamper-evident history (issue 13): every consent record, disclosure and
-- disclosure event carries hash = SHA-256(previous hash || canonical
-- encoding), chained per subject.
--
-- The chain is keyed by subjects.subject_key, the internal surrogate key,
-- never by the external subject_id: erasure renames subject_id (V5), and the
-- chain must stay valid across that rename. For the same reason subject_id
-- is not part of the encoding.
--
-- The hash is computed here, in a BEFORE INSERT trigger, so that every write
-- path (the API, the import's bulk insert, the refusals carried over after an
-- erasure) is chained without knowing about it. `consentd verify` recomputes
-- every hash in Rust (src/ledger/) from the stored columns: the two
-- encodings must agree byte for byte.
--
-- Free text (evidence, reference, justification, note) is not encoded
-- directly: the row stores `text_digest`, a SHA-256 over it, and the chain
-- hashes that digest. Blanking the text later (erasure of free text) then
-- leaves the chain intact, while any other change of the text is still
-- caught by comparing it with its digest.

-- One encoded field: a 4-byte big-endian length and the bytes, or length -1
-- for NULL, so that no two different rows encode alike.
CREATE FUNCTION ledger_field(v bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL THEN int4send(-1) ELSE int4send(octet_length(v)) || v END
$$;

CREATE FUNCTION ledger_text(v text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT ledger_field(convert_to(v, 'UTF8')) $$;

CREATE FUNCTION ledger_int(v bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT ledger_field(int8send(v)) $$;

CREATE FUNCTION ledger_uuid(v uuid) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT ledger_field(uuid_send(v)) $$;

-- Microseconds since the epoch: what PostgreSQL stores, so nothing rounds.
CREATE FUNCTION ledger_time(v timestamptz) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_field(int8send((extract(epoch FROM v) * 1000000)::bigint))
$$;

-- An array: its element count, then each element as a field.
CREATE FUNCTION ledger_texts(v text[]) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_field(int4send(cardinality(v)) || coalesce(
        (SELECT string_agg(ledger_text(e), ''::bytea ORDER BY i)
           FROM unnest(v) WITH ORDINALITY AS t (e, i)),
        ''::bytea))
$$;

-- Where each subject's chain starts: bound to its key, so a chain copied to
-- another subject does not verify.
CREATE FUNCTION ledger_genesis(k uuid) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(convert_to('consentd ledger v1', 'UTF8') || uuid_send(k))
$$;

ALTER TABLE consent_records
    ADD COLUMN chain_seq   bigint,
    ADD COLUMN text_digest bytea,
    ADD COLUMN hash        bytea;
ALTER TABLE disclosures
    ADD COLUMN chain_seq   bigint,
    ADD COLUMN text_digest bytea,
    ADD COLUMN hash        bytea;
ALTER TABLE disclosure_events
    ADD COLUMN chain_seq   bigint,
    ADD COLUMN text_digest bytea,
    ADD COLUMN hash        bytea;

-- The head of each subject's chain. Appends lock this row, so appends for one
-- subject take turns and chain in commit order, while appends for different
-- subjects never wait for each other.
CREATE TABLE ledger_heads (
    subject_key  uuid    PRIMARY KEY,
    length       bigint  NOT NULL,
    head         bytea   NOT NULL
);

CREATE FUNCTION ledger_consent_record_encoding(r consent_records) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_text('consent_record') || ledger_int(r.chain_seq) || ledger_uuid(r.record_id)
        || ledger_int(r.sequence) || ledger_text(r.purpose) || ledger_text(r.field)
        || ledger_text(r.recipient) || ledger_text(r.choice) || ledger_text(r.channel)
        || ledger_text(r.notice_version) || ledger_text(r.actor) || ledger_text(r.request_id)
        || ledger_time(r.recorded_at) || ledger_field(r.text_digest)
$$;

CREATE FUNCTION ledger_disclosure_encoding(r disclosures) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_text('disclosure') || ledger_int(r.chain_seq) || ledger_uuid(r.disclosure_id)
        || ledger_text(r.recipient_id) || ledger_text(r.purpose) || ledger_text(r.legal_basis)
        || ledger_texts(r.fields) || ledger_texts(r.withheld) || ledger_text(r.status)
        || ledger_time(r.review_due) || ledger_text(r.requested_by) || ledger_text(r.request_id)
        || ledger_time(r.requested_at) || ledger_field(r.text_digest)
$$;

CREATE FUNCTION ledger_disclosure_event_encoding(r disclosure_events) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT ledger_text('disclosure_event') || ledger_int(r.chain_seq) || ledger_uuid(r.disclosure_id)
        || ledger_text(r.kind) || ledger_text(r.actor) || ledger_time(r.at)
        || ledger_field(r.text_digest)
$$;

-- Takes the next position in the subject's chain: locks the head row (made
-- on the subject's first append) and returns its length and hash.
CREATE FUNCTION ledger_lock_head(k uuid, OUT chain_length bigint, OUT chain_head bytea)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_heads (subject_key, length, head)
    VALUES (k, 0, ledger_genesis(k))
    ON CONFLICT (subject_key) DO NOTHING;
    SELECT h.length, h.head INTO chain_length, chain_head
      FROM ledger_heads h WHERE h.subject_key = k FOR UPDATE;
END;
$$;

CREATE FUNCTION ledger_chain_consent_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW; -- the foreign key refuses the row
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := sha256(ledger_text(NEW.evidence));
    NEW.hash := sha256(prev.chain_head || ledger_consent_record_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

CREATE FUNCTION ledger_chain_disclosure() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := sha256(ledger_text(NEW.reference) || ledger_text(NEW.justification));
    NEW.hash := sha256(prev.chain_head || ledger_disclosure_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

CREATE FUNCTION ledger_chain_disclosure_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k uuid;
    prev record;
BEGIN
    SELECT subject_key INTO k FROM subjects WHERE subject_id = NEW.subject_id;
    IF k IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO prev FROM ledger_lock_head(k);
    NEW.chain_seq := prev.chain_length + 1;
    NEW.text_digest := sha256(ledger_text(NEW.note));
    NEW.hash := sha256(prev.chain_head || ledger_disclosure_event_encoding(NEW));
    UPDATE ledger_heads SET length = NEW.chain_seq, head = NEW.hash WHERE subject_key = k;
    RETURN NEW;
END;
$$;

-- History written before this migration is chained once, in the order it
-- was written. The append-only guards are off for exactly this.
ALTER TABLE consent_records DISABLE TRIGGER consent_records_append_only;
ALTER TABLE disclosures DISABLE TRIGGER disclosures_append_only;
ALTER TABLE disclosure_events DISABLE TRIGGER disclosure_events_append_only;
DO $$
DECLARE
    row record;
    prev record;
    c consent_records;
    d disclosures;
    e disclosure_events;
BEGIN
    FOR row IN
        SELECT s.subject_key, h.tbl, h.id, h.kind
          FROM (SELECT subject_id, 1 AS tbl, record_id AS id, '' AS kind, recorded_at AS at, sequence AS tiebreak
                  FROM consent_records
                UNION ALL
                SELECT subject_id, 2, disclosure_id, '', requested_at, 0 FROM disclosures
                UNION ALL
                SELECT subject_id, 3, disclosure_id, kind, at, 0 FROM disclosure_events) h
          JOIN subjects s USING (subject_id)
         ORDER BY s.subject_key, h.at, h.tbl, h.tiebreak, h.id, h.kind
    LOOP
        SELECT * INTO prev FROM ledger_lock_head(row.subject_key);
        IF row.tbl = 1 THEN
            SELECT * INTO c FROM consent_records WHERE record_id = row.id;
            c.chain_seq := prev.chain_length + 1;
            c.text_digest := sha256(ledger_text(c.evidence));
            c.hash := sha256(prev.chain_head || ledger_consent_record_encoding(c));
            UPDATE consent_records SET chain_seq = c.chain_seq, text_digest = c.text_digest, hash = c.hash
             WHERE subject_id = c.subject_id AND sequence = c.sequence;
            UPDATE ledger_heads SET length = c.chain_seq, head = c.hash WHERE subject_key = row.subject_key;
        ELSIF row.tbl = 2 THEN
            SELECT * INTO d FROM disclosures WHERE disclosure_id = row.id;
            d.chain_seq := prev.chain_length + 1;
            d.text_digest := sha256(ledger_text(d.reference) || ledger_text(d.justification));
            d.hash := sha256(prev.chain_head || ledger_disclosure_encoding(d));
            UPDATE disclosures SET chain_seq = d.chain_seq, text_digest = d.text_digest, hash = d.hash
             WHERE disclosure_id = d.disclosure_id;
            UPDATE ledger_heads SET length = d.chain_seq, head = d.hash WHERE subject_key = row.subject_key;
        ELSE
            SELECT * INTO e FROM disclosure_events WHERE disclosure_id = row.id AND kind = row.kind;
            e.chain_seq := prev.chain_length + 1;
            e.text_digest := sha256(ledger_text(e.note));
            e.hash := sha256(prev.chain_head || ledger_disclosure_event_encoding(e));
            UPDATE disclosure_events SET chain_seq = e.chain_seq, text_digest = e.text_digest, hash = e.hash
             WHERE disclosure_id = e.disclosure_id AND kind = e.kind;
            UPDATE ledger_heads SET length = e.chain_seq, head = e.hash WHERE subject_key = row.subject_key;
        END IF;
    END LOOP;
END;
$$;
ALTER TABLE consent_records ENABLE TRIGGER consent_records_append_only;
ALTER TABLE disclosures ENABLE TRIGGER disclosures_append_only;
ALTER TABLE disclosure_events ENABLE TRIGGER disclosure_events_append_only;

ALTER TABLE consent_records
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN text_digest SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
ALTER TABLE disclosures
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN text_digest SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
ALTER TABLE disclosure_events
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN text_digest SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;

CREATE TRIGGER consent_records_ledger
    BEFORE INSERT ON consent_records
    FOR EACH ROW EXECUTE FUNCTION ledger_chain_consent_record();
CREATE TRIGGER disclosures_ledger
    BEFORE INSERT ON disclosures
    FOR EACH ROW EXECUTE FUNCTION ledger_chain_disclosure();
CREATE TRIGGER disclosure_events_ledger
    BEFORE INSERT ON disclosure_events
    FOR EACH ROW EXECUTE FUNCTION ledger_chain_disclosure_event();

-- Signed checkpoints of the chain heads, written by the server now and then
-- and at shutdown. A checkpoint signs a digest over every chain head it knows
-- (ordered by subject_key), so a chain later cut short or rewritten at its
-- end no longer matches, even when the rewrite recomputed every hash.
CREATE TABLE ledger_checkpoints (
    checkpoint_id  bigint       PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
    made_at        timestamptz  NOT NULL,
    chains         bigint       NOT NULL,
    records        bigint       NOT NULL,
    heads_digest   bytea        NOT NULL,
    -- Ed25519, over the encoding in src/ledger/checkpoint.rs.
    key_id         text         NOT NULL,
    public_key     bytea        NOT NULL,
    signature      bytea        NOT NULL
);

-- The heads each checkpoint saw, only those that changed since the one
-- before: replaying them in order gives the full set of every checkpoint,
-- without storing every head every time.
CREATE TABLE ledger_checkpoint_heads (
    checkpoint_id  bigint  NOT NULL,
    subject_key    uuid    NOT NULL,
    length         bigint  NOT NULL,
    head           bytea   NOT NULL,
    PRIMARY KEY (checkpoint_id, subject_key)
);

-- The heads as of the latest checkpoint, which the next one compares with.
-- Only the checkpoint writer touches it, so it never waits on appends.
CREATE TABLE ledger_checkpointed (
    subject_key  uuid    PRIMARY KEY,
    length       bigint  NOT NULL,
    head         bytea   NOT NULL
);

CREATE TRIGGER ledger_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER ledger_checkpoint_heads_append_only
    BEFORE UPDATE OR DELETE ON ledger_checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
