//! A capture of the log lines a test produces.

use std::sync::{Arc, Mutex};

/// Log lines written while the returned guard lives (on this thread: use the current-thread
/// runtime of `#[tokio::test]`).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Starts a capture of this thread's log lines, until the guard drops.
    ///
    /// tracing caches, per call site, whether anyone wants its events, and while at most one
    /// dispatcher exists it asks only the current thread's: a test without a capture could cache
    /// "never" and a capturing test on another thread would lose the event. A dispatcher kept
    /// alive for the whole run makes tracing ask every live dispatcher instead.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        static KEEP_ALIVE: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP_ALIVE
            .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// The captured lines at `level` ("WARN", "ERROR", ...).
    pub fn lines_at(&self, level: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains(level))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
