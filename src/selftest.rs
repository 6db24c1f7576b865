//! Self-test (filled in below).
