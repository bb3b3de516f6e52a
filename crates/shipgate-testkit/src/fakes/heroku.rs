//! A fake of the heroku API (in progress).
