//! A fake of the vercel API (in progress).
