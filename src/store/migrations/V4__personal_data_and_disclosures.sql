-- The vault (personal data, encrypted), its collection records, recipient-
-- named permissions, and the disclosure history (issue 3).
--
-- As in V1, every table leads with subject_id so it can be distributed by
-- subject, and the histories are append-only (refuse_history_change).

-- R5: a permission may name one recipient ("separate consent", PIPL Art. 23).
-- '' means no recipient, like `field`. Such records stay out of
-- consent_state: they decide disclosures to that recipient only, and are
-- read from the history, which is short per subject.
ALTER TABLE consent_records ADD COLUMN recipient text NOT NULL DEFAULT '';

-- The current value of each field of a subject. A new value replaces the old
-- one (UPDATE), because keeping old values would keep personal data the
-- person has corrected; what was collected, why and when stays in
-- collection_records.
--
-- R8: `ciphertext` is AES-256-GCM over the value, with (subject_id, field)
-- as associated data, so a ciphertext copied to another row fails to
-- decrypt. `key_id` names the key, so keys can rotate while old rows are
-- still readable; `nonce` is random per encryption.
CREATE TABLE personal_data (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    field           text        NOT NULL,
    key_id          text        NOT NULL,
    nonce           bytea       NOT NULL,
    ciphertext      bytea       NOT NULL,
    -- R2: the purposes of the latest collection.
    collected_for   text[]      NOT NULL,
    collected_at    timestamptz NOT NULL,
    -- R3: NULL until someone confirms the value with the person.
    verified_at     timestamptz,
    PRIMARY KEY (subject_id, field)
);

-- `keys rotate` looks for rows under old keys.
CREATE INDEX personal_data_key_id ON personal_data (key_id);

-- R2: every collection, forever: what, why, how, when, under which notice.
-- Never the value.
CREATE TABLE collection_records (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    collection_id   uuid        NOT NULL,
    field           text        NOT NULL,
    collected_for   text[]      NOT NULL,
    channel         text        NOT NULL
                    CHECK (channel IN ('web', 'email_link', 'support', 'api', 'import')),
    notice_version  text        NOT NULL,
    actor           text        NOT NULL,
    request_id      text,
    collected_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (subject_id, collection_id)
);

CREATE TRIGGER collection_records_append_only
    BEFORE UPDATE OR DELETE ON collection_records
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER collection_records_no_truncate
    BEFORE TRUNCATE ON collection_records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- Every disclosure decision that releases or may release data: recipient,
-- fields, purpose or legal basis, reference, who asked and when. Never values.
-- Append-only: what happened afterwards (approval, review) is appended to
-- disclosure_events, so the first record is never rewritten.
CREATE TABLE disclosures (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    disclosure_id   uuid        NOT NULL,
    recipient_id    text        NOT NULL,
    -- Exactly one of purpose and legal_basis: a legal basis is the purpose.
    purpose         text,
    legal_basis     text        CHECK (legal_basis IN
                        ('legal_process', 'protect_rights_property', 'emergency_safety')),
    reference       text,
    justification   text,
    -- Released fields, or for a pending request the fields it would release.
    fields          text[]      NOT NULL,
    -- Withheld fields with their reason, as 'field:reason'.
    withheld        text[]      NOT NULL,
    -- The status decided at request time; approval is an event.
    status          text        NOT NULL
                    CHECK (status IN ('released', 'partial', 'denied', 'pending_approval')),
    review_due      timestamptz,
    requested_by    text        NOT NULL,
    request_id      text,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((purpose IS NULL) <> (legal_basis IS NULL)),
    PRIMARY KEY (subject_id, disclosure_id)
);

-- GetDisclosure and ApproveDisclosure name a disclosure by id alone. (When
-- the tables are distributed by subject, this index becomes a small
-- reference table from disclosure_id to subject_id.)
CREATE UNIQUE INDEX disclosures_disclosure_id ON disclosures (disclosure_id);
-- ListDisclosures with overdue reviews looks across subjects.
CREATE INDEX disclosures_review_due ON disclosures (review_due) WHERE review_due IS NOT NULL;

CREATE TRIGGER disclosures_append_only
    BEFORE UPDATE OR DELETE ON disclosures
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER disclosures_no_truncate
    BEFORE TRUNCATE ON disclosures
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- What happened to a disclosure after it was requested. The unique key on
-- (disclosure_id, kind) makes a second approval or review fail instead of
-- being recorded twice, even when two approvers race.
CREATE TABLE disclosure_events (
    subject_id      text        NOT NULL REFERENCES subjects (subject_id),
    disclosure_id   uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('approved', 'reviewed')),
    actor           text        NOT NULL,
    note            text        NOT NULL DEFAULT '',
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (subject_id, disclosure_id, kind),
    FOREIGN KEY (subject_id, disclosure_id) REFERENCES disclosures (subject_id, disclosure_id)
);

CREATE TRIGGER disclosure_events_append_only
    BEFORE UPDATE OR DELETE ON disclosure_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER disclosure_events_no_truncate
    BEFORE TRUNCATE ON disclosure_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
