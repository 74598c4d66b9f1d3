//! The Redis commands a request costs on `stores::RedisStore`, counted exactly: on a server of
//! the test's own (nobody else sends it commands), as `MONITOR` shows them, the commands a script
//! runs inside Redis left out. A write of a stored session is one `GET` and one save (as with
//! tower-sessions' own Redis store, a `GET` and a `SET`), small or large: on Redis 7 an `EVALSHA`,
//! on Valkey 9 a `SET ... IFEQ`. A read is one `GET`, an anonymous read nothing, a new visitor's
//! first write one `SET NX`.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::Duration,
};

use fred::{interfaces::ClientLike, prelude::Pool, types::CustomCommand};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_sessions_controller::stores::RedisStore;

use crate::{app, connect, routes, servers, Gate, Visitor};

/// A `MONITOR` connection to a server: every command the server runs, as it runs it.
struct Monitor {
    lines: UnboundedReceiver<String>,
    markers: usize,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("a MONITOR connection");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        // Commands count from the server's `+OK`: it monitors from then on.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR's answer");
        assert_eq!(ok.trim_end(), "+OK", "MONITOR's answer");
        reader
            .get_ref()
            .set_read_timeout(None)
            .expect("no read timeout");
        let (sender, lines) = unbounded_channel();
        // The thread ends when the server closes the connection (the server dies with the test).
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines, markers: 0 }
    }

    /// The commands clients sent since the last call, by name, in order: sends a marker (`ECHO`)
    /// through `pool` and reads up to it. Commands run by a script inside Redis (`[0 lua]`) are
    /// not round trips and are left out.
    async fn take(&mut self, pool: &Pool) -> Vec<String> {
        self.markers += 1;
        let marker = format!("round-trip-marker-{}", self.markers);
        let _: String = pool
            .custom(
                CustomCommand::new_static("ECHO", None, false),
                vec![marker.as_str()],
            )
            .await
            .expect("ECHO");
        let mut commands = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.recv())
                .await
                .expect("MONITOR shows the marker within 5 s")
                .expect("the MONITOR connection is open");
            if line.contains(&format!("\"{marker}\"")) {
                return commands;
            }
            let Some((source, command)) = line.split_once("] \"") else {
                continue; // `+OK`, the answer to MONITOR.
            };
            if source.ends_with(" lua") {
                continue;
            }
            let name = command.split('"').next().unwrap_or_default();
            commands.push(name.to_ascii_lowercase());
        }
    }
}

fn commands(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[tokio::test]
async fn a_write_is_two_commands_a_read_one_an_anonymous_read_none() {
    let test = "round_trips::a_write_is_two_commands_a_read_one_an_anonymous_read_none";
    let Some(redis) = servers::own_redis(test) else {
        return;
    };
    // Redis 7 refuses `SET ... IFEQ` (a syntax error) once; the store then saves by the script.
    // The server does not know the script yet: `EVALSHA` answers NOSCRIPT and `EVAL` runs it (and
    // makes the server keep it). From then on: one `GET`, one `EVALSHA` (which also checks that
    // the script's SHA-1 in the code is Redis' own).
    count_round_trips(
        &redis,
        &["get", "set", "evalsha", "eval"],
        &["get", "evalsha"],
    )
    .await;
}

#[tokio::test]
async fn on_valkey_a_write_is_a_get_and_a_set() {
    let test = "round_trips::on_valkey_a_write_is_a_get_and_a_set";
    let Some(valkey) = servers::own_valkey(test) else {
        return;
    };
    // The server's own compare-and-set: every save is one `SET ... IFEQ`, no script ever.
    count_round_trips(&valkey, &["get", "set"], &["get", "set"]).await;
}

/// Counts the commands of an anonymous read, a first write, writes of a small and a large
/// session, a read and a logout on `redis`: a write of a stored session is `first_write` the
/// first time, `write` from then on.
async fn count_round_trips(redis: &servers::OwnRedis, first_write: &[&str], write: &[&str]) {
    let pool = connect(&redis.url()).await.expect("the test's own Redis");
    let router = app(routes(Gate::default()), RedisStore::new(pool.clone()));
    let mut visitor = Visitor::default();

    let mut monitor = Monitor::start(redis.port);
    monitor.take(&pool).await;

    visitor.get(&router, "/ns/cart").await.assert_ok();
    assert_eq!(
        monitor.take(&pool).await,
        commands(&[]),
        "an anonymous read"
    );

    visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
    assert_eq!(
        monitor.take(&pool).await,
        commands(&["set"]),
        "a new visitor's first write"
    );

    visitor.post(&router, "/ns/cart/b/2").await.assert_ok();
    assert_eq!(
        monitor.take(&pool).await,
        commands(first_write),
        "the first save a server sees"
    );

    for i in 0..5 {
        visitor
            .post(&router, &format!("/ns/cart/k{i}/{i}"))
            .await
            .assert_ok();
        assert_eq!(monitor.take(&pool).await, commands(write), "write {i}");
    }

    // A record of 512 bytes and more: its load holds the bytes it read in the process, the
    // session carries a short token, and the save finds the bytes by it: still one save (a
    // token that named nothing would cost a second, after a merge).
    let long = "x".repeat(600);
    for i in 0..3 {
        visitor
            .post(&router, &format!("/ns/cart/long{i}/{long}"))
            .await
            .assert_ok();
        assert_eq!(
            monitor.take(&pool).await,
            commands(write),
            "write {i} of a large session"
        );
    }

    let reply = visitor.get(&router, "/ns/cart").await;
    assert_eq!(reply.json()["k4"], "4");
    assert_eq!(reply.json()["long2"], long.as_str());
    assert_eq!(monitor.take(&pool).await, commands(&["get"]), "a read");

    visitor.post(&router, "/logout").await.assert_ok();
    assert_eq!(monitor.take(&pool).await, commands(&["del"]), "a logout");

    let _ = pool.quit().await;
}
