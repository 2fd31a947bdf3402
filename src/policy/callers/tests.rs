//! Tests of the permission rules and the credential lookups.
