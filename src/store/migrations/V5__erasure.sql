-- Erasure (PIPL Art. 47) that keeps what the law needs kept.
--
-- The consent history and the disclosure accounting stay as proof, but the
-- external id in them is replaced by a pseudonym. Renaming a subject is one
-- UPDATE of subjects.subject_id that cascades to every table keyed by it, so
-- no row can be missed. The append-only tables allow exactly that change,
-- and only while an erasure runs (the transaction-local setting
-- `consentd.erasure`); any other change is still refused.

CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('consentd.erasure', true) = 'on'
       AND to_jsonb(NEW) - 'subject_id' = to_jsonb(OLD) - 'subject_id' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- disclosure_events reaches subjects through disclosures; a second,
-- direct foreign key to subjects would give the rename two cascade paths.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT c.conname, c.conrelid::regclass AS child, pg_get_constraintdef(c.oid) AS def
          FROM pg_constraint c
         WHERE c.contype = 'f'
           AND c.confrelid IN ('subjects'::regclass, 'disclosures'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.child, fk.conname);
        IF fk.child = 'disclosure_events'::regclass AND fk.def LIKE '%REFERENCES subjects%' THEN
            CONTINUE;
        END IF;
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s ON UPDATE CASCADE', fk.child, fk.conname, fk.def);
    END LOOP;
END;
$$;

-- The suppression list: a keyed hash of each erased external id (never the
-- id itself), and the pseudonym its history now carries. When the same id
-- registers again, its earlier refusals are applied to the new subject, so a
-- refusal outlives erasure; until then Check answers REASON_SUBJECT_ERASED.
-- The row is also the record of the erasure: when and by whom.
CREATE TABLE erased_subjects (
    subject_hash  bytea       PRIMARY KEY,
    pseudonym     text        NOT NULL UNIQUE,
    erased_at     timestamptz NOT NULL DEFAULT now(),
    erased_by     text        NOT NULL
);
