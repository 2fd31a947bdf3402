//! Tests of the callers file loader.
