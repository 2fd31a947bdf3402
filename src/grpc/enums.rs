//! Every domain enum that crosses the wire, paired with its `consent.v1`
//! enum in one table. The macro writes both directions as exhaustive
//! matches, so a variant added on either side without a row here does not
//! compile; the test checks that each row pairs values of the same name.

use super::pb;
use crate::{
    domain::{
        Channel, Choice, ConcernCategory, ConcernOutcome, ConcernStatus, DisclosureStatus,
        LegalBasis, SubjectKind, Violations,
    },
    policy::{Category, Outcome, Reason},
};

/// A domain enum with a proto counterpart whose zero is `*_UNSPECIFIED`.
pub trait PbEnum: Copy + Sized + 'static {
    type Pb: Copy + PartialEq + std::fmt::Debug + Into<i32> + TryFrom<i32>;

    /// Every domain variant with its proto value, as declared in the table.
    #[cfg(test)]
    const PAIRS: &'static [(Self, Self::Pb)];

    fn to_pb(self) -> Self::Pb;

    /// `None` for `*_UNSPECIFIED`, which no domain value stands for.
    fn from_pb(pb: Self::Pb) -> Option<Self>;

    /// The proto number, for a prost message field.
    fn to_wire(self) -> i32 {
        self.to_pb().into()
    }
}

macro_rules! pb_enums {
    ($($domain:ident => $pb:ident { $($d:ident => $p:ident),+ $(,)? })+) => {
        $(
            impl PbEnum for $domain {
                type Pb = pb::$pb;

                #[cfg(test)]
                const PAIRS: &'static [(Self, pb::$pb)] = &[$(($domain::$d, pb::$pb::$p)),+];

                fn to_pb(self) -> pb::$pb {
                    match self { $($domain::$d => pb::$pb::$p),+ }
                }

                fn from_pb(value: pb::$pb) -> Option<Self> {
                    match value {
                        pb::$pb::Unspecified => None,
                        $(pb::$pb::$p => Some($domain::$d)),+
                    }
                }
            }
        )+

        /// Runs `check` once per table above: a table added here is tested
        /// without anyone remembering to list it.
        #[cfg(test)]
        fn for_every_table(check: &mut dyn FnMut(Vec<(&'static str, &'static str)>, &'static str)) {
            $(check(
                $domain::PAIRS.iter().map(|(d, p)| (d.as_str(), p.as_str_name())).collect(),
                pb::$pb::Unspecified.as_str_name(),
            );)+
            $(round_trips::<$domain>();)+
        }
    };
}

pb_enums! {
    SubjectKind => SubjectKind { Individual => Individual, Organization => Organization }
    Choice => Choice { Grant => Grant, Refuse => Refuse }
    Channel => Channel {
        Web => Web,
        EmailLink => EmailLink,
        Support => Support,
        Api => Api,
        Import => Import,
    }
    Outcome => Decision { Allow => Allow, Deny => Deny }
    Reason => Reason {
        SubjectUnknown => SubjectUnknown,
        SubjectErased => SubjectErased,
        FieldNotPermitted => FieldNotPermitted,
        Contract => Contract,
        ConsentGranted => ConsentGranted,
        NoConsent => NoConsent,
        ConsentRefused => ConsentRefused,
        OptedOut => OptedOut,
        NotOptedOut => NotOptedOut,
        StaleData => StaleData,
        NotCollected => NotCollected,
        NotCollectedForPurpose => NotCollectedForPurpose,
    }
    ConcernCategory => ConcernCategory {
        Misuse => Misuse,
        UnwantedMail => UnwantedMail,
        WrongData => WrongData,
        Disclosure => Disclosure,
        Other => Other,
    }
    ConcernStatus => ConcernStatus {
        Filed => Filed,
        Acknowledged => Acknowledged,
        Resolved => Resolved,
    }
    ConcernOutcome => ConcernOutcome {
        Fixed => Fixed,
        NoViolation => NoViolation,
        Rejected => Rejected,
    }
    LegalBasis => LegalBasis {
        LegalProcess => LegalProcess,
        ProtectRightsProperty => ProtectRightsProperty,
        EmergencySafety => EmergencySafety,
    }
    Category => RecipientCategory {
        Courier => Courier,
        Processor => Processor,
        Partner => Partner,
        Authority => Authority,
    }
    DisclosureStatus => DisclosureStatus {
        Released => Released,
        Partial => Partial,
        Denied => Denied,
        PendingApproval => PendingApproval,
    }
}

/// The proto number of an optional value: absent is `*_UNSPECIFIED` (0).
pub fn optional_to_wire<E: PbEnum>(value: Option<E>) -> i32 {
    value.map_or(0, E::to_wire)
}

/// A required enum field: an unknown number and UNSPECIFIED are violations.
pub fn required<E: PbEnum>(v: &mut Violations, field: &str, raw: i32) -> Option<E> {
    v.check(
        field,
        match decode::<E>(raw) {
            Err(unknown) => Err(unknown),
            Ok(value) => value.ok_or_else(|| "must be set".to_string()),
        },
    )
}

/// An optional enum field: UNSPECIFIED means absent, an unknown number is a
/// violation (the outer `None`).
pub fn optional<E: PbEnum>(v: &mut Violations, field: &str, raw: i32) -> Option<Option<E>> {
    v.check(field, decode::<E>(raw))
}

fn decode<E: PbEnum>(raw: i32) -> Result<Option<E>, String> {
    E::Pb::try_from(raw)
        .map(E::from_pb)
        .map_err(|_| format!("unknown value {raw}"))
}

#[cfg(test)]
fn round_trips<E: PbEnum + PartialEq + std::fmt::Debug>() {
    for &(domain, wire) in E::PAIRS {
        assert_eq!(domain.to_pb(), wire);
        assert_eq!(E::from_pb(wire), Some(domain));
        assert_eq!(decode::<E>(domain.to_wire()), Ok(Some(domain)));
    }
    assert_eq!(decode::<E>(0), Ok(None));
    // Every proto number but zero belongs to exactly one row.
    let numbers: Vec<i32> = (1..1000).filter(|n| E::Pb::try_from(*n).is_ok()).collect();
    assert_eq!(numbers.len(), E::PAIRS.len());
    for n in numbers {
        assert_eq!(decode::<E>(n).unwrap().map(E::to_wire), Some(n));
    }
    assert!(decode::<E>(1000).is_err());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SubjectKind::Individual` pairs with `SUBJECT_KIND_INDIVIDUAL`: the
    /// proto name ends in the domain's stored text, upper-cased. A row that
    /// pairs two different values fails here.
    #[test]
    fn every_enum_maps_both_ways_to_the_proto_value_of_the_same_name() {
        let mut tables = 0;
        for_every_table(&mut |pairs, unspecified| {
            tables += 1;
            let prefix = unspecified.trim_end_matches("UNSPECIFIED");
            for (domain, wire) in pairs {
                assert_eq!(wire, format!("{prefix}{}", domain.to_uppercase()));
            }
        });
        assert_eq!(tables, 11);
    }
}
