use super::*;

fn uuid(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn hash(id: &str) -> Vec<u8> {
    format!("h:{id}").into_bytes()
}

#[test]
fn a_registered_id_is_found_and_others_are_not() {
    let mut t = Tables::default();
    let a = t.register(10, "C-1");
    let b = t.register(11, "C-2");
    assert_ne!(a, b);
    assert_eq!(t.find("C-1"), Some(a));
    assert_eq!(t.find("C-2"), Some(b));
    assert_eq!(t.find("C-3"), None);
    assert_eq!(t.register(12, "C-1"), a, "a repeat keeps the first slot");
    assert_eq!(t.subjects(), 2);
}

#[test]
fn the_newest_choice_for_a_purpose_and_field_replaces_the_older() {
    let mut t = Tables::default();
    let s = t.register(1, "C-1");
    t.choose(s, "mail", None, Choice::Grant, uuid(1));
    t.choose(s, "mail", None, Choice::Refuse, uuid(2));
    let mail = t.purposes.get("mail").unwrap();
    assert_eq!(t.latest(s, mail, None), Some((Choice::Refuse, uuid(2))));
    // The replaced node went to the free list and is reused.
    let nodes = t.nodes.len();
    t.choose(s, "mail", None, Choice::Grant, uuid(3));
    assert_eq!(t.nodes.len(), nodes);
    assert_eq!(t.latest(s, mail, None), Some((Choice::Grant, uuid(3))));
}

#[test]
fn the_newer_of_the_purpose_wide_and_the_field_choice_decides() {
    let mut t = Tables::default();
    let s = t.register(1, "C-1");
    t.choose(s, "mail", Some("email"), Choice::Refuse, uuid(1));
    t.choose(s, "mail", None, Choice::Grant, uuid(2));
    let mail = t.purposes.get("mail").unwrap();
    let email = t.fields.get("email");
    assert_eq!(t.latest(s, mail, email), Some((Choice::Grant, uuid(2))));
    t.choose(s, "mail", Some("email"), Choice::Refuse, uuid(3));
    assert_eq!(t.latest(s, mail, email), Some((Choice::Refuse, uuid(3))));
    // Another field sees only the purpose-wide choice; an unknown one too.
    t.choose(s, "mail", Some("phone"), Choice::Refuse, uuid(4));
    assert_eq!(t.latest(s, mail, None), Some((Choice::Grant, uuid(2))));
    let other = t.purposes.intern("other").unwrap();
    assert_eq!(t.latest(s, other, email), None);
}

#[test]
fn an_erasure_finds_its_subject_by_registration_and_leaves_only_the_hash() {
    let mut t = Tables::default();
    let a = t.register(5, "C-1");
    let b = t.register(9, "C-2");
    t.choose(a, "mail", None, Choice::Refuse, uuid(1));
    t.store_field(a, "email", &["mail"], Utc::now());
    assert!(!t.erase(6, hash), "no registration has sequence 6");
    assert!(t.erase(5, hash));
    assert_eq!(t.find("C-1"), None);
    assert_eq!(t.lookup("C-1", || hash("C-1")), Found::Erased);
    assert_eq!(t.lookup("C-9", || hash("C-9")), Found::Unknown);
    assert_eq!(t.lookup("C-2", || unreachable!()), Found::Registered(b));
    // The id's bytes are gone from the arena; its choices and ages too.
    assert!(!t.ids.windows(3).any(|w| w == b"C-1"));
    assert_eq!(t.slots[a as usize].choices, NIL);
    assert!(!t.ages.contains_key(&a));
    assert!(!t.erase(5, hash), "an erased registration is not held");
    // Registering again makes a new subject with no choices.
    let again = t.register(12, "C-1");
    assert_eq!(t.lookup("C-1", || unreachable!()), Found::Registered(again));
    let mail = t.purposes.get("mail").unwrap();
    assert_eq!(t.latest(again, mail, None), None);
}

/// A registration that waited on the erasure of its id comes on the feed
/// before that erasure; the erasure ends the old one and the new one stays.
#[test]
fn a_new_registration_before_the_erasure_of_the_old_one_is_held_after_it() {
    let mut t = Tables::default();
    let old = t.register(5, "C-1");
    t.choose(old, "mail", None, Choice::Refuse, uuid(1));
    t.register(7, "C-2");
    assert_eq!(t.register(8, "C-1"), old, "held until the erasure");
    assert!(t.erase(5, hash));
    let new = t.find("C-1").expect("the new registration");
    assert_eq!(t.slot_of_registration(8), Some(new));
    assert_eq!(
        t.slot_of_registration(7),
        t.find("C-2"),
        "the others stay found"
    );
    let mail = t.purposes.get("mail").unwrap();
    assert_eq!(t.latest(new, mail, None), None, "no choice of the old life");
    // A repeat of the held registration is no new one.
    t.register(8, "C-1");
    assert!(t.reborn.is_empty());
}

#[test]
fn a_registration_out_of_order_keeps_slots_sorted_and_found() {
    let mut t = Tables::default();
    let a = t.register(10, "C-10");
    t.store_field(a, "email", &["mail"], Utc::now());
    t.register(30, "C-30");
    t.register(20, "C-20");
    let seqs: Vec<i64> = t.slots.iter().map(|s| s.sequence).collect();
    assert_eq!(seqs, [10, 20, 30]);
    for (seq, id) in [(10, "C-10"), (20, "C-20"), (30, "C-30")] {
        assert_eq!(t.find(id), t.slot_of_registration(seq), "{id}");
    }
    let email = t.fields.get("email");
    let mail = t.purposes.get("mail");
    assert!(t.facts(t.find("C-10").unwrap(), email, mail).is_some());
    assert!(t.facts(t.find("C-20").unwrap(), email, mail).is_none());
}

#[test]
fn long_non_ascii_ids_round_trip() {
    let mut t = Tables::default();
    let long = "é".repeat(128);
    let s = t.register(1, &long);
    t.register(2, "x");
    assert_eq!(t.find(&long), Some(s));
    assert_eq!(t.find("x"), Some(1));
    assert!(t.erase(1, hash));
    assert_eq!(t.find(&long), None);
    assert_eq!(t.lookup(&long, || hash(&long)), Found::Erased);
}

#[test]
fn facts_say_whether_the_value_was_collected_for_the_purpose() {
    let mut t = Tables::default();
    let s = t.register(1, "C-1");
    let when = Utc::now();
    t.store_field(s, "email", &["mail", "billing"], when);
    let (email, mail) = (t.fields.get("email"), t.purposes.get("mail"));
    let facts = t.facts(s, email, mail).unwrap();
    assert!(facts.collected_for_purpose);
    assert_eq!(facts.checked_at, when);
    let other = t.purposes.intern("other");
    assert!(!t.facts(s, email, other).unwrap().collected_for_purpose);
    assert!(!t.facts(s, email, None).unwrap().collected_for_purpose);
    // A later collection replaces the earlier.
    t.store_field(s, "email", &["other"], when);
    assert!(t.facts(s, email, other).unwrap().collected_for_purpose);
    assert!(!t.facts(s, email, mail).unwrap().collected_for_purpose);
}
