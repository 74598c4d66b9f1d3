//! [`SqliteStore`].

use std::{fmt, time::Duration};

use sqlx::{sqlite::Sqlite, SqlitePool};
use tower_sessions::{
    session::{Id, Record},
    session_store,
};

use super::{invalid, Dialect, Table};

impl Dialect for Sqlite {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    // sqlx stores the dates as RFC 3339 text, whose order as text is not the order in time
    // (`07Z` sorts after `07.5Z`): compared as Julian days.
    fn later(column: &str, param: &str) -> String {
        format!("julianday({column}) > julianday({param})")
    }
}

/// What a table name may be: tower-sessions-sqlx-store's rule.
const RULE: &str = "ASCII letters, digits, hyphens and underscores";

/// Whether `name` may name a SQLite table (see [`RULE`]).
fn is_table_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Session records in a SQLite table, merged atomically: overlapping requests of one visitor
/// lose nothing, across app instances (pools, processes) sharing the database file.
///
/// The table of tower-sessions-sqlx-store's `SqliteStore` (by default `tower_sessions`), with
/// the same encoding: either store reads what the other wrote, so an app switches with no change
/// to the schema and keeps its sessions. A save is one compare-and-set `update` when no other
/// request of the session saved since its load (see [`stores`](crate::stores)); a load is one
/// `select`.
///
/// Expired rows are never loaded nor written back; [`delete_expired`](Self::delete_expired) or
/// [`continuously_delete_expired`](Self::continuously_delete_expired) removes them. Clones share
/// the pool.
///
/// # Example
///
/// ```
/// use axum::Router;
/// use tower::ServiceBuilder;
/// use tower_sessions::SessionManagerLayer;
/// use tower_sessions_controller::{
///     stores::{sqlx::SqlitePool, SqliteStore},
///     SessionControllerLayer,
/// };
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SqlitePool::connect("sqlite::memory:").await?;
/// let store = SqliteStore::new(pool);
/// store.migrate().await?;
///
/// let app: Router = Router::new().layer(
///     ServiceBuilder::new()
///         .layer(SessionManagerLayer::new(store))
///         .layer(SessionControllerLayer::new()),
/// );
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    table: Table<Sqlite>,
    table_name: String,
}

impl SqliteStore {
    /// A store on `pool`, in the table `tower_sessions` (that of tower-sessions-sqlx-store).
    pub fn new(pool: SqlitePool) -> Self {
        Self::on(pool, "tower_sessions".to_owned())
    }

    fn on(pool: SqlitePool, table_name: String) -> Self {
        // Quoted, the name is the same table as unquoted (tower-sessions-sqlx-store's), and a
        // hyphen in it is valid SQL.
        let table = Table::new(pool, &format!(r#""{table_name}""#));
        Self { table, table_name }
    }

    /// The same store in the table `table_name`.
    ///
    /// # Errors
    ///
    /// A name that is not ASCII letters, digits, hyphens and underscores (as
    /// tower-sessions-sqlx-store requires).
    ///
    /// ```
    /// # use tower_sessions_controller::stores::{sqlx::SqlitePool, SqliteStore};
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = SqlitePool::connect("sqlite::memory:").await?;
    /// let store = SqliteStore::new(pool).with_table_name("sessions")?;
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_table_name(self, table_name: impl AsRef<str>) -> Result<Self, String> {
        let table_name = table_name.as_ref();
        if !is_table_name(table_name) {
            return Err(invalid("table", table_name, RULE));
        }
        Ok(Self::on(self.table.pool().clone(), table_name.to_owned()))
    }

    /// Creates the table if it does not exist: the statement of tower-sessions-sqlx-store's
    /// `migrate`, so a table either made is the other's.
    ///
    /// # Errors
    ///
    /// What the database answers.
    pub async fn migrate(&self) -> sqlx::Result<()> {
        let create_table = format!(
            r#"
            create table if not exists "{table_name}"
            (
                id text primary key not null,
                data blob not null,
                expiry_date integer not null
            )
            "#,
            table_name = self.table_name
        );
        sqlx::query(&create_table)
            .execute(self.table.pool())
            .await?;
        Ok(())
    }

    /// Deletes the sessions that have expired (they are never loaded, but stay in the table
    /// until deleted).
    ///
    /// # Errors
    ///
    /// A database failure, as `session_store::Error::Backend`.
    pub async fn delete_expired(&self) -> session_store::Result<()> {
        self.table.delete_expired().await
    }

    /// Deletes the expired sessions every `period`, for ever (the first time after one
    /// `period`): spawn it as a task.
    ///
    /// # Errors
    ///
    /// The first database failure ends it.
    pub async fn continuously_delete_expired(self, period: Duration) -> session_store::Result<()> {
        self.table.continuously_delete_expired(period).await
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool", self.table.pool())
            .field("table_name", &self.table_name)
            .finish()
    }
}

sql_session_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_tower_sessions_sqlx_store() {
        assert!(is_table_name("tower-sessions_1"));
        assert!(!is_table_name(r#"a" or 1"#));
        assert!(!is_table_name("séance"));
        assert!(!is_table_name(""));
    }
}
