//! The SQL stores: [`PostgresStore`] and [`SqliteStore`], on sqlx, in the tables of
//! tower-sessions-sqlx-store.
//!
//! # Tables and encoding
//!
//! The same tables, made by the same `migrate` statements, as tower-sessions-sqlx-store 0.15
//! makes: in PostgreSQL `"tower_sessions"."session"` (`id text primary key, data bytea,
//! expiry_date timestamptz`), in SQLite `tower_sessions` (`id text primary key, data blob,
//! expiry_date integer`, where sqlx stores the date as RFC 3339 text). `data` is the record
//! encoded as MessagePack (`rmp_serde::to_vec`). An app that switches between these stores and
//! tower-sessions-sqlx-store's keeps its visitors logged in, in both directions, with no change
//! to the schema.
//!
//! # Compare-and-set without a version column
//!
//! A load remembers the bytes of `data` it read. A save is one statement that writes only if the
//! row still holds them:
//!
//! ```sql
//! update <table> set data = $new, expiry_date = $expiry
//! where id = $id and data = $seen and expiry_date > $now
//! ```
//!
//! One row changed: the save is done, in the one round trip a save of tower-sessions' own store
//! costs. No row changed: another request saved the session meanwhile, or it ended (deleted,
//! expired); one `select` of the live row gives the latest record, the save merges its request's
//! operations into it and tries again (or, the session being gone, is refused and writes
//! nothing). Comparing the whole value needs no new column (a version number would), and it is
//! exact where a hash (PostgreSQL's `md5(data)`, absent from FIPS builds) is not: whatever wrote
//! the row, this crate's store or tower-sessions-sqlx-store's, the comparison sees it. A value
//! written back byte for byte as it was is the same record, so merging into it is merging into
//! the latest. The cost is the loaded bytes sent back once per save, and kept while the request
//! runs: in the process, named by a short token in the request's bookkeeping, within a request
//! that `SessionControllerLayer` serves; elsewhere, or for a record under 512 bytes, in the
//! bookkeeping itself, hex encoded.
//!
//! A new session (or a cycled id) is one `insert ... on conflict (id) do update ... where` the
//! row under the id has expired: it stores the record unless a live session holds the id, in
//! one statement. A load is one `select` of the row if it has not expired. A record that cannot
//! be decoded is logged (`warn`) and reads as no session: the visitor gets a new one.

use std::{sync::Arc, time::Duration};

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store,
};

use super::{
    encoded::{self, encode, token},
    held, Batches, Replaced, ToStore,
};

/// What differs between the databases beyond sqlx's own types.
pub(crate) trait Dialect: Database {
    /// The number of rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// SQL: whether the expiry date in `column` is later than the instant bound at `param`.
    fn later(column: &str, param: &str) -> String;
}

/// The statements of a store on one table.
struct Statements {
    fetch: String,
    replace: String,
    upsert: String,
    insert: String,
    delete: String,
    delete_expired: String,
}

impl Statements {
    /// The statements on `table`, a name ready to be written into SQL (quoted).
    fn new<DB: Dialect>(table: &str) -> Self {
        Self {
            fetch: format!(
                "select data from {table} where id = $1 and {}",
                DB::later("expiry_date", "$2")
            ),
            replace: format!(
                "update {table} set data = $2, expiry_date = $3 \
                 where id = $1 and data = $4 and {}",
                DB::later("expiry_date", "$5")
            ),
            upsert: format!(
                "insert into {table} (id, data, expiry_date) values ($1, $2, $3) \
                 on conflict (id) do update \
                 set data = excluded.data, expiry_date = excluded.expiry_date"
            ),
            insert: format!(
                "insert into {table} as stored (id, data, expiry_date) values ($1, $2, $3) \
                 on conflict (id) do update \
                 set data = excluded.data, expiry_date = excluded.expiry_date \
                 where not ({})",
                DB::later("stored.expiry_date", "$4")
            ),
            delete: format!("delete from {table} where id = $1"),
            delete_expired: format!(
                "delete from {table} where not ({})",
                DB::later("expiry_date", "$1")
            ),
        }
    }
}

/// A session table of one database: the pool and the statements on the table.
pub(crate) struct Table<DB: Database> {
    pool: Pool<DB>,
    sql: Arc<Statements>,
    batches: Batches,
}

impl<DB: Database> Clone for Table<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            batches: self.batches.clone(),
        }
    }
}

impl<DB: Database> Table<DB> {
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    pub(crate) fn batches(&self) -> &Batches {
        &self.batches
    }
}

impl<DB> Table<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> OffsetDateTime: Encode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// The table `table` (a name ready to be written into SQL) of the database of `pool`.
    pub(crate) fn new(pool: Pool<DB>, table: &str) -> Self {
        Self {
            pool,
            sql: Arc::new(Statements::new::<DB>(table)),
            batches: Batches::default(),
        }
    }

    pub(crate) async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
        let row = sqlx::query(&self.sql.fetch)
            .bind(id.to_string())
            .bind(OffsetDateTime::now_utc())
            .fetch_optional(&self.pool)
            .await
            .map_err(failed::<DB>("load"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data: Vec<u8> = row.try_get(0).map_err(failed::<DB>("load"))?;
        Ok(decode(id, &data).map(|record| (record, held::token_of(data))))
    }

    pub(crate) async fn replace(
        &self,
        record: ToStore<'_>,
        seen: Option<&str>,
        keep: bool,
    ) -> session_store::Result<Replaced> {
        // A token is always one of ours; one that is not names no stored value.
        let seen = seen.map(held::bytes_of);
        let loaded_len = seen
            .as_ref()
            .and_then(Option::as_ref)
            .map_or(0, |seen| seen.as_ref().len());
        let data = encode(&record, loaded_len)?;
        // The token of the new version, when the save wants the record back.
        let kept = keep.then(|| token(&data));
        let Some(seen) = seen else {
            sqlx::query(&self.sql.upsert)
                .bind(record.id().to_string())
                .bind(data)
                .bind(record.expiry_date())
                .execute(&self.pool)
                .await
                .map_err(failed::<DB>("save"))?;
            return Ok(Replaced::Done(
                kept.map(|token| (record.into_record(), token)),
            ));
        };
        if let Some(seen) = seen {
            let result = sqlx::query(&self.sql.replace)
                .bind(record.id().to_string())
                .bind(data)
                .bind(record.expiry_date())
                .bind(seen.into_vec())
                .bind(OffsetDateTime::now_utc())
                .execute(&self.pool)
                .await
                .map_err(failed::<DB>("save"))?;
            if DB::rows_affected(&result) > 0 {
                return Ok(Replaced::Done(
                    kept.map(|token| (record.into_record(), token)),
                ));
            }
        }
        Ok(Replaced::Changed(self.fetch(&record.id()).await?))
    }

    pub(crate) async fn insert(&self, record: &Record) -> session_store::Result<bool> {
        let result = sqlx::query(&self.sql.insert)
            .bind(record.id.to_string())
            .bind(encode(record, 0)?)
            .bind(record.expiry_date)
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(failed::<DB>("create"))?;
        Ok(DB::rows_affected(&result) > 0)
    }

    pub(crate) async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query(&self.sql.delete)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(failed::<DB>("delete"))?;
        Ok(())
    }

    pub(crate) async fn delete_expired(&self) -> session_store::Result<()> {
        sqlx::query(&self.sql.delete_expired)
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(failed::<DB>("deletion of expired sessions"))?;
        Ok(())
    }

    pub(crate) async fn continuously_delete_expired(
        self,
        period: Duration,
    ) -> session_store::Result<()> {
        let mut interval = tokio::time::interval(period);
        // The first tick completes at once.
        interval.tick().await;
        loop {
            interval.tick().await;
            self.delete_expired().await?;
        }
    }
}

/// The store error for a failed `what` on `DB`. sqlx's messages name the failure (a lost
/// connection, a closed pool, the server's message), never the connection string.
fn failed<DB: Database>(what: &'static str) -> impl FnOnce(sqlx::Error) -> session_store::Error {
    move |err| {
        session_store::Error::Backend(format!("{} session store: {what} failed: {err}", DB::NAME))
    }
}

/// The record stored under `id` as `data`, or `None` (logged) if it cannot be decoded. The
/// row's id is the record's, whatever its value says.
fn decode(id: &Id, data: &[u8]) -> Option<Record> {
    let mut record = encoded::decode(id, data)?;
    record.id = *id;
    Some(record)
}

/// Why `name` cannot name a `what` (schema or table): `rule` says what a name may be.
fn invalid(what: &str, name: &str, rule: &str) -> String {
    format!("invalid {what} name {name:?}: {rule}")
}

/// The `CompareAndSet`, `SessionStore` and `ExpiredDeletion` of a store whose table is its
/// field `table`.
macro_rules! sql_session_store {
    ($store:ty) => {
        impl $crate::stores::CompareAndSet for $store {
            async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
                self.table.fetch(id).await
            }

            async fn replace(
                &self,
                record: $crate::stores::ToStore<'_>,
                seen: Option<&str>,
                keep: bool,
            ) -> session_store::Result<$crate::stores::Replaced> {
                self.table.replace(record, seen, keep).await
            }

            async fn insert(&self, record: &Record) -> session_store::Result<bool> {
                self.table.insert(record).await
            }

            fn batches(&self) -> &$crate::stores::Batches {
                self.table.batches()
            }
        }

        #[async_trait::async_trait]
        impl tower_sessions::SessionStore for $store {
            async fn create(&self, record: &mut Record) -> session_store::Result<()> {
                $crate::stores::create(self, record).await
            }

            async fn save(&self, record: &Record) -> session_store::Result<()> {
                $crate::stores::save(self, record).await
            }

            async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
                $crate::stores::load(self, id).await
            }

            async fn delete(&self, id: &Id) -> session_store::Result<()> {
                self.table.delete(id).await
            }
        }

        #[async_trait::async_trait]
        impl tower_sessions::ExpiredDeletion for $store {
            async fn delete_expired(&self) -> session_store::Result<()> {
                self.table.delete_expired().await
            }
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_record_takes_the_rows_id() {
        let record = Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: OffsetDateTime::UNIX_EPOCH,
        };
        let other = Id::default();
        let decoded = decode(&other, &encode(&record, 0).expect("encodes")).expect("decodes");
        assert_eq!(decoded.id, other);
    }
}
