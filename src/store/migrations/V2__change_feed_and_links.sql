-- The change feed (WatchChanges) and unsubscribe links.

-- Unsubscribe tokens must not carry the external id (whoever holds a
-- forwarded letter would learn it), so each subject gets a random surrogate
-- key that tokens name instead. It means nothing outside this database.
ALTER TABLE subjects ADD COLUMN subject_key uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX subjects_subject_key ON subjects (subject_key);

-- The feed reads the history in sequence order across all subjects.
CREATE INDEX consent_records_sequence ON consent_records (sequence);

-- Writers NOTIFY this channel in the transaction that appends records;
-- PostgreSQL delivers it at commit, which wakes every WatchChanges stream.
-- (The payload is empty: the feed always re-reads by sequence, so a lost or
-- merged notification can delay a change but never drop it.)
COMMENT ON TABLE consent_records IS
    'Append-only consent history. Writers NOTIFY consent_changes on commit.';
