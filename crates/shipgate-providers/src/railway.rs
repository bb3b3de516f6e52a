//! The railway adapter (in progress).
