//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding a migration
//! leaves an incremental build running the old set (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
