//! What the integration tests share: an app under test and visitors that carry the session
//! cookie between requests like a browser, direct access to the stored record, a store that
//! counts its calls (and can fail on demand), the stamps as they are stored, handlers several
//! test files use, and a capture of the logs.
//!
//! Each file of `tests/` compiles as its own crate and includes this module with `mod support;`.
//! `services.rs`, next to this file, is not declared here: it holds the clients of the machine's
//! Redis, and only the files that use a server include it (`#[path = ".../support/services.rs"]`),
//! so the others do not link the store clients.
#![allow(dead_code, unused_imports)]

mod app;
mod logs;
pub mod routes;
mod stamp;
mod store;

pub use app::{send, Reply, TestApp, Visitor};
pub use logs::Logs;
pub use stamp::{assert_stamp, enc, instant, nanos, seconds, stored_stamp, user_keys};
pub use store::{Calls, CountingStore};

use time::{macros::datetime, OffsetDateTime};

/// The instant every test clock starts at.
pub const START: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);
