-- Subjects, their consent history, and the current state derived from it.
--
-- Every table leads with subject_id, so that each can later be distributed by
-- subject (Citus-style) without changing a key: all reads and writes of one
-- subject then stay on one node.

-- A subject is known by the calling systems' own external id (`C-1042`).
-- Enumerated columns are text with CHECK constraints rather than Postgres
-- enums: adding a value is then a plain constraint change, and the stored
-- text is readable in any SQL console.
CREATE TABLE subjects (
    subject_id      text        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('individual', 'organization')),
    notice_version  text        NOT NULL,
    channel         text        NOT NULL
                    CHECK (channel IN ('web', 'email_link', 'support', 'api', 'import')),
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The history of every choice. It is evidence, so it is append-only: the
-- triggers below refuse UPDATE, DELETE and TRUNCATE whoever asks.
--
-- `sequence` orders all records. It comes from one identity sequence, so it
-- is unique and increasing across subjects, which lets the current state keep
-- "the latest record" by a plain comparison and lets a change feed resume
-- from a cursor.
CREATE TABLE consent_records (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    sequence        bigint      GENERATED ALWAYS AS IDENTITY,
    record_id       uuid        NOT NULL,
    purpose         text        NOT NULL,
    -- '' means every field of the purpose. An empty string rather than NULL
    -- so that (subject, purpose, field) can be a primary key in consent_state.
    field           text        NOT NULL DEFAULT '',
    choice          text        NOT NULL CHECK (choice IN ('grant', 'refuse')),
    channel         text        NOT NULL
                    CHECK (channel IN ('web', 'email_link', 'support', 'api', 'import')),
    notice_version  text        NOT NULL,
    evidence        text        NOT NULL DEFAULT '',
    actor           text        NOT NULL,
    request_id      text,
    -- clock_timestamp, not now(): records written in one transaction still
    -- get the times they were made.
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (subject_id, sequence)
);

-- Idempotent retries find the first record by its id.
CREATE INDEX consent_records_record_id ON consent_records (record_id);

CREATE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER consent_records_append_only
    BEFORE UPDATE OR DELETE ON consent_records
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER consent_records_no_truncate
    BEFORE TRUNCATE ON consent_records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- The latest record for each (subject, purpose, field), written in the same
-- transaction as the record itself. A Check is then one primary-key read
-- instead of a scan of the history. It can always be rebuilt from
-- consent_records, which stays the source of truth.
CREATE TABLE consent_state (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    purpose         text        NOT NULL,
    field           text        NOT NULL,
    choice          text        NOT NULL CHECK (choice IN ('grant', 'refuse')),
    record_id       uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (subject_id, purpose, field)
);

-- AIP-155 idempotency keys. The first call claims the key together with a
-- digest of its content, in the same transaction as its write; a retry with
-- the same key and digest gets the first result back, and a different digest
-- is ALREADY_EXISTS. The key is global (not per subject) so that reusing a
-- key for another subject is caught too.
CREATE TABLE idempotency_keys (
    request_id      text        PRIMARY KEY,
    -- SHA-256 over the RPC name and the request's content.
    digest          bytea       NOT NULL,
    -- What the first call produced (a record id, "created"), for the replay.
    result_ref      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
