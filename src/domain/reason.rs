//! Why a decision came out as it did: the answer of a Check, and the reason
//! a disclosure withholds a field, which the disclosure history stores.

stored_enum!(
    /// One variant per `consent.v1.Reason`.
    Reason {
        SubjectUnknown => "subject_unknown",
        SubjectErased => "subject_erased",
        FieldNotPermitted => "field_not_permitted",
        Contract => "contract",
        ConsentGranted => "consent_granted",
        NoConsent => "no_consent",
        ConsentRefused => "consent_refused",
        OptedOut => "opted_out",
        NotOptedOut => "not_opted_out",
        /// DENY: the data is older than the purpose allows and the purpose
        /// requires fresh data (R3).
        StaleData => "stale_data",
        /// Withheld: no value is stored, or it was not collected for this
        /// purpose (R2).
        NotCollected => "not_collected",
        /// DENY (Check): the stored value was collected for other purposes
        /// only, so it may not be used for this one (R2).
        NotCollectedForPurpose => "not_collected_for_purpose",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` comes from the macro's variant list, so this covers every
    /// variant, `SubjectErased` included.
    #[test]
    fn reasons_round_trip_through_their_stored_text() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_stored(reason.as_str()), Some(*reason));
        }
        assert_eq!(
            Reason::from_stored("subject_erased"),
            Some(Reason::SubjectErased)
        );
        assert_eq!(Reason::from_stored("unknown"), None);
    }
}
