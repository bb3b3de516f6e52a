//! The cloudrun adapter (in progress).
