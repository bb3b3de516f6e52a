//! Connecting and migrating.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool. `max_connections` bounds what this replica takes from the database.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before each use: it doubled the round trips of every query (a 4-query API read
        // made 8). A connection broken meanwhile (the database restarted) fails its next query
        // and is closed; the engine retries, and readiness reports the outage.
        .test_before_acquire(false)
        .connect_with(options.application_name("shipgate"))
        .await
}

/// Applies pending migrations (safe to run from several replicas at once: sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
