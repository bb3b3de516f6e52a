//! A fake of the cloudrun API (in progress).
