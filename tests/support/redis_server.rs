//! A `redis-server` (or `valkey-server`) of a test's (or a benchmark's) own, on a free port with
//! its own temporary directory and no persistence (`--save "" --appendonly no`). It dies with the thread that
//! started it (Linux: PR_SET_PDEATHSIG), and is killed, its directory removed, when its guard is
//! dropped, also when a test fails; it can be stopped and started again on the same port. The
//! machine's own Redis is never touched. Shared by `tests/redis_store/`, `tests/faults/` and
//! `benches/redis.rs` (each includes this file as a module of its own).

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const HOST: &str = "127.0.0.1";

/// Sends one inline command to the server on `port` and returns its reply: a status, an error,
/// an integer, or a bulk string's contents; `None` when nothing answers.
pub fn command(port: u16, line: &str) -> Option<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let first = first.trim_end();
    match first.strip_prefix('$') {
        Some(len) => {
            let len: usize = len.parse().ok()?;
            let mut body = vec![0; len];
            reader.read_exact(&mut body).ok()?;
            String::from_utf8(body).ok()
        }
        None => Some(first.to_owned()),
    }
}

/// How many times a server ran `command` and it did not fail, from the `INFO commandstats`
/// reply `info` (`calls` counts failed commands too: a `SET ... IFEQ` that Redis 7 refuses, an
/// `EVALSHA` that finds no script).
pub fn ran(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    let Some(stats) = info.lines().find_map(|line| line.strip_prefix(&prefix)) else {
        return 0;
    };
    let stat = |name: &str| -> u64 {
        stats
            .split(',')
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    stat("calls").saturating_sub(stat("failed_calls"))
}

/// Whether the server on `port` answers `PING`.
pub fn ping(port: u16) -> bool {
    command(port, "PING").as_deref() == Some("+PONG")
}

/// Waits up to `within` until the server on `port` answers (`up`) or stops answering; whether
/// it did.
pub fn wait_for(port: u16, up: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ping(port) == up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ping(port) == up
}

/// The process id of the server on `port`: a guard kills only its own.
fn server_pid(port: u16) -> Option<u32> {
    let info = command(port, "INFO server")?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
}

/// A port that is free now, and whose cluster bus port (`+ 10000`) is free too.
fn free_port() -> Option<u16> {
    for _ in 0..64 {
        let port = TcpListener::bind((HOST, 0)).ok()?.local_addr().ok()?.port();
        if port <= 55_000 && TcpListener::bind((HOST, port + 10_000)).is_ok() {
            return Some(port);
        }
    }
    // The kernel's picks are all high on some machines: try a fixed low range.
    (20_000..30_000).step_by(7).find(|&port| {
        TcpListener::bind((HOST, port)).is_ok() && TcpListener::bind((HOST, port + 10_000)).is_ok()
    })
}

#[cfg(target_os = "linux")]
fn die_with_this_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only `prctl`, which is async-signal-safe,
    // and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_this_thread(_command: &mut Command) {}

/// One `redis-server` (or `valkey-server`) of the test's own.
pub struct OwnRedis {
    pub port: u16,
    pub dir: PathBuf,
    program: String,
    server: Option<Child>,
}

/// The Valkey server the tests and benchmarks start: `VALKEY_SERVER` (a path), else the one
/// `.ci/run` unpacked into `target/ci-valkey/` (Valkey 9.1, which has `SET ... IFEQ`), else
/// `valkey-server` on the `PATH`.
pub fn valkey_program() -> String {
    if let Some(path) = std::env::var("VALKEY_SERVER")
        .ok()
        .filter(|path| !path.is_empty())
    {
        return path;
    }
    let fetched = std::env::var("CARGO_MANIFEST_DIR")
        .map(|root| PathBuf::from(root).join("target/ci-valkey/valkey-server"))
        .ok()
        .filter(|path| path.is_file());
    match fetched {
        Some(path) => path.to_string_lossy().into_owned(),
        None => "valkey-server".to_owned(),
    }
}

impl OwnRedis {
    /// Starts a `redis-server` (in cluster mode if `cluster`), or says why it cannot.
    pub fn start(cluster: bool) -> Result<Self, String> {
        Self::start_program("redis-server", cluster)
    }

    /// Starts a Valkey server ([`valkey_program`]), or says why it cannot.
    pub fn start_valkey() -> Result<Self, String> {
        Self::start_program(&valkey_program(), false)
    }

    /// Starts `program`, a Redis or Valkey server (in cluster mode if `cluster`), or says why it
    /// cannot.
    pub fn start_program(program: &str, cluster: bool) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let mut tried = Vec::new();
        for attempt in 0..3 {
            let port = free_port().ok_or("no free port")?;
            let dir = std::env::temp_dir().join(format!(
                "tower_sessions_controller_redis_store_{}_{nanos}_{attempt}_{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).map_err(|err| format!("creating {dir:?}: {err}"))?;
            let mut redis = Self {
                port,
                dir,
                program: program.to_owned(),
                server: None,
            };
            match redis.spawn(cluster) {
                Ok(()) => return Ok(redis),
                Err(err) => tried.push(err),
            }
        }
        Err(tried.join("; "))
    }

    pub fn url(&self) -> String {
        format!("redis://{HOST}:{}", self.port)
    }

    fn spawn(&mut self, cluster: bool) -> Result<(), String> {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let mut command = Command::new(&self.program);
        command.args([
            "--bind",
            HOST,
            "--port",
            &port,
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
        }
        command
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_this_thread(&mut command);
        let server = command
            .spawn()
            .map_err(|err| format!("{} cannot be started: {err}", self.program))?;
        let pid = server.id();
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                break;
            }
            // Another server may hold the port: only this process's answer counts.
            if server_pid(self.port) == Some(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "{} on port {port} did not answer; its log:\n{}",
            self.program,
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    /// Whether the server process has ended.
    fn exited(&mut self) -> bool {
        self.server
            .as_mut()
            .is_none_or(|server| !matches!(server.try_wait(), Ok(None)))
    }

    /// Stops the server as an operator would: `SHUTDOWN NOSAVE` on its own port; panics if it
    /// does not stop.
    pub fn stop(&mut self) {
        let pid = self.server.as_ref().map(Child::id);
        assert!(
            pid.is_some() && server_pid(self.port) == pid,
            "the server on port {} is not the test's own",
            self.port
        );
        let reply = command(self.port, "SHUTDOWN NOSAVE");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.exited(),
            "the test's Redis still runs after SHUTDOWN NOSAVE (reply {reply:?})"
        );
        self.server = None;
        assert!(
            wait_for(self.port, false, Duration::from_secs(5)),
            "the test's Redis still answers after SHUTDOWN NOSAVE"
        );
    }

    /// Starts the server again, on the same port and directory; panics if it does not start.
    pub fn restart(&mut self, cluster: bool) {
        if let Err(err) = self.spawn(cluster) {
            panic!("the test's Redis did not start again: {err}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
