//! [`PostgresStore`].

use std::{fmt, time::Duration};

use sqlx::{postgres::Postgres, PgPool};
use tower_sessions::{
    session::{Id, Record},
    session_store,
};

use super::{invalid, Dialect, Table};

impl Dialect for Postgres {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn later(column: &str, param: &str) -> String {
        format!("{column} > {param}")
    }
}

/// What a schema or table name may be: tower-sessions-sqlx-store's rule.
const RULE: &str =
    "a letter or underscore followed by letters, digits, underscores or dollar signs";

/// Whether `name` may name a PostgreSQL schema or table (see [`RULE`]).
fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|first| first.is_alphabetic() || first == '_')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Session records in a PostgreSQL table, merged atomically: overlapping requests of one
/// visitor lose nothing, across any number of app instances.
///
/// The table of tower-sessions-sqlx-store's `PostgresStore` (by default
/// `"tower_sessions"."session"`), with the same encoding: either store reads what the other
/// wrote, so an app switches with no change to the schema and keeps its sessions. A save is one
/// compare-and-set `update` when no other request of the session saved since its load (see
/// [`stores`](crate::stores)); a load is one `select`.
///
/// Expired rows are never loaded nor written back; [`delete_expired`](Self::delete_expired) or
/// [`continuously_delete_expired`](Self::continuously_delete_expired) removes them. Clones share
/// the pool.
///
/// # Example
///
/// ```no_run
/// use axum::Router;
/// use tower::ServiceBuilder;
/// use tower_sessions::SessionManagerLayer;
/// use tower_sessions_controller::{
///     stores::{sqlx::PgPool, PostgresStore},
///     SessionControllerLayer,
/// };
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPool::connect("postgres://app@localhost/app").await?;
/// let store = PostgresStore::new(pool);
/// store.migrate().await?;
/// let deletion = std::time::Duration::from_secs(60);
/// tokio::spawn(store.clone().continuously_delete_expired(deletion));
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
pub struct PostgresStore {
    table: Table<Postgres>,
    schema_name: String,
    table_name: String,
}

impl PostgresStore {
    /// A store on `pool`, in the table `session` of the schema `tower_sessions` (those of
    /// tower-sessions-sqlx-store).
    pub fn new(pool: PgPool) -> Self {
        Self::on(pool, "tower_sessions".to_owned(), "session".to_owned())
    }

    fn on(pool: PgPool, schema_name: String, table_name: String) -> Self {
        let table = Table::new(pool, &format!(r#""{schema_name}"."{table_name}""#));
        Self {
            table,
            schema_name,
            table_name,
        }
    }

    /// The same store in the schema `schema_name`.
    ///
    /// # Errors
    ///
    /// A name that is not a letter or underscore followed by letters, digits, underscores or
    /// dollar signs (as tower-sessions-sqlx-store requires).
    ///
    /// ```no_run
    /// # use tower_sessions_controller::stores::{sqlx::PgPool, PostgresStore};
    /// # async fn run(pool: PgPool) -> Result<(), String> {
    /// let store = PostgresStore::new(pool)
    ///     .with_schema_name("app")?
    ///     .with_table_name("sessions")?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_schema_name(self, schema_name: impl AsRef<str>) -> Result<Self, String> {
        let schema_name = schema_name.as_ref();
        if !is_identifier(schema_name) {
            return Err(invalid("schema", schema_name, RULE));
        }
        Ok(Self::on(
            self.table.pool().clone(),
            schema_name.to_owned(),
            self.table_name,
        ))
    }

    /// The same store in the table `table_name`.
    ///
    /// # Errors
    ///
    /// A name that is not a letter or underscore followed by letters, digits, underscores or
    /// dollar signs (as tower-sessions-sqlx-store requires).
    pub fn with_table_name(self, table_name: impl AsRef<str>) -> Result<Self, String> {
        let table_name = table_name.as_ref();
        if !is_identifier(table_name) {
            return Err(invalid("table", table_name, RULE));
        }
        Ok(Self::on(
            self.table.pool().clone(),
            self.schema_name,
            table_name.to_owned(),
        ))
    }

    /// Creates the schema and the table if they do not exist: the statements of
    /// tower-sessions-sqlx-store's `migrate`, so a table either made is the other's.
    ///
    /// # Errors
    ///
    /// What the database answers.
    pub async fn migrate(&self) -> sqlx::Result<()> {
        let mut tx = self.table.pool().begin().await?;
        let create_schema = format!(
            r#"create schema if not exists "{schema_name}""#,
            schema_name = self.schema_name,
        );
        // Two instances creating the schema at once: the second fails on a duplicate key, and
        // then the schema exists (tower-sessions-sqlx-store does the same).
        if let Err(err) = sqlx::query(&create_schema).execute(&mut *tx).await {
            if !err
                .to_string()
                .contains("duplicate key value violates unique constraint")
            {
                return Err(err);
            }
            return Ok(());
        }
        let create_table = format!(
            r#"
            create table if not exists "{schema_name}"."{table_name}"
            (
                id text primary key not null,
                data bytea not null,
                expiry_date timestamptz not null
            )
            "#,
            schema_name = self.schema_name,
            table_name = self.table_name
        );
        sqlx::query(&create_table).execute(&mut *tx).await?;
        tx.commit().await?;
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

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", self.table.pool())
            .field("schema_name", &self.schema_name)
            .field("table_name", &self.table_name)
            .finish()
    }
}

sql_session_store!(PostgresStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_tower_sessions_sqlx_store() {
        assert!(is_identifier("_session$1"));
        assert!(is_identifier("séance"));
        assert!(!is_identifier("1session"));
        assert!(!is_identifier(r#"a"; drop table x; --"#));
        assert!(!is_identifier(""));
    }
}
