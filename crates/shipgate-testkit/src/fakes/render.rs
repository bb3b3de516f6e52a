//! A fake of the render API (in progress).
