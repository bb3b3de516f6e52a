//! The vercel adapter (in progress).
