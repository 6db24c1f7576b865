//! GPU backend.
