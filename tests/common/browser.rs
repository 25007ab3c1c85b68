//! A real browser for the end-to-end tests: Debian's chromium, headless,
//! driven by a playwright-core script in tests/web/ that talks to the test
//! over stdin/stdout, one JSON line each way.
//!
//! Needs `chromium` and `npm ci --prefix tests/web`: the tests that use it
//! are ignored by a plain `cargo test`; `.ci/run` provides both and runs
//! them with `-- --ignored`, where a missing piece fails.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// tests/web: the scripts and their `node_modules`.
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// A missing piece fails the test (it runs only when asked, see #[ignore]).
pub fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    );
    assert!(
        web_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing (npm ci --prefix tests/web; .ci/run does)"
    );
}

/// One running browser script (`node tests/web/<script>`).
pub struct BrowserScript {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl BrowserScript {
    /// Starts `script` with `envs` (and `CHROMIUM`).
    pub fn start(script: &str, envs: &[(&str, &str)]) -> BrowserScript {
        let web = web_dir();
        let mut child = Command::new("node")
            .arg(web.join(script))
            .current_dir(&web)
            .envs(envs.iter().copied())
            .env("CHROMIUM", CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        BrowserScript {
            child,
            lines,
            stderr,
        }
    }

    /// What the script wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The script's next JSON line, within `within`; else panics with its
    /// stderr and `context()` (the gateway's log, say).
    pub fn line(&self, within: Duration, context: &dyn Fn() -> String) -> Value {
        let l = self.lines.recv_timeout(within).unwrap_or_else(|_| {
            panic!(
                "no word from the browser script within {within:?}\nbrowser script stderr:\n{}\n{}",
                self.stderr(),
                context()
            )
        });
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    /// Sends one line to the script.
    pub fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the browser script");
    }

    /// Waits for the script to exit, within `within`; `true` if it exited 0.
    pub fn finish(&mut self, within: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                return status.success();
            }
            if start.elapsed() > within {
                panic!(
                    "the browser script did not exit within {within:?}\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrowserScript {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
