//! The render adapter (in progress).
