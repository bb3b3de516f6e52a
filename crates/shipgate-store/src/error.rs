//! The store's errors.

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not allowed in the current state.
    #[error("{0}")]
    Refused(String),
    /// Another writer changed the rollout, or this worker lost its lease.
    #[error("rollout changed underneath this writer")]
    Fenced,
    /// Stored data that cannot be read back (a bug or a manual edit).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A credential could not be encrypted or decrypted.
    #[error("credential encryption: {0}")]
    Crypto(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database broke a deadlock by aborting this transaction (it may be retried
    /// whole).
    pub fn is_deadlock(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.code().as_deref() == Some("40P01")
            }
            _ => false,
        }
    }

    /// Whether the error is a unique violation of the named constraint.
    pub fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
        match error {
            sqlx::Error::Database(db) => db.constraint() == Some(constraint),
            _ => false,
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}
