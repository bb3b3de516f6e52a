//! The heroku adapter (in progress).
