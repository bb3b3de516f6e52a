//! Test support: a fresh database per test, and the real `shipgate` binary started on port 0.
