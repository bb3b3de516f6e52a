//! A fake of the railway API (in progress).
