//! The fixtures of the crate's own SQL stores (`stores::PostgresStore`, `stores::SqliteStore`)
//! for the behaviour suite: a table of their own in the test PostgreSQL (made by
//! tower-sessions-sqlx-store's `migrate`, then the crate's own, which must find it done), a
//! SQLite file of their own.

use std::env;

use tower_sessions_controller::stores::{PostgresStore, SqliteStore};
use tower_sessions_sqlx_store::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::{connect_postgres, database_url, services, unique_name, Fixture, Teardown};

pub async fn atomic_postgres(test: &'static str) -> Option<Fixture<PostgresStore>> {
    let table = unique_name("tsc_test");
    let pool = match connect_postgres(&table).await {
        Ok((_, pool)) => pool,
        Err(err) => {
            services::unreachable(test, "PostgreSQL", &database_url(), &err);
            return None;
        }
    };
    let store = PostgresStore::new(pool.clone())
        .with_schema_name("public")
        .and_then(|store| store.with_table_name(&table))
        .unwrap_or_else(|err| panic!("{test}: {err}"));
    let migrated = store.migrate().await;
    let fixture = Fixture::new(
        store,
        Teardown::Postgres {
            pool,
            table,
            drop_table: true,
        },
    );
    if let Err(err) = migrated {
        fixture.teardown().await;
        panic!("{test}: migrating an existing table failed: {err}");
    }
    Some(fixture)
}

pub async fn atomic_sqlite(_test: &'static str) -> Option<Fixture<SqliteStore>> {
    let path = env::temp_dir().join(format!("{}.db", unique_name("tsc_test")));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("cannot open SQLite at {}: {err}", path.display()));
    let store = SqliteStore::new(pool.clone());
    let migrated = store.migrate().await;
    let fixture = Fixture::new(store, Teardown::Sqlite { pool, path });
    if let Err(err) = migrated {
        fixture.teardown().await;
        panic!("cannot migrate SQLite: {err}");
    }
    Some(fixture)
}
