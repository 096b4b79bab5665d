//! `tollgate serve` as the binary users run, in a process of its own: built once per test run
//! (with this test binary's profile, into the same target directory), started on a free
//! loopback port, killed when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The `tollgate` binary, built by cargo for this run (`cargo test` builds only the CLI's
/// library for this suite, and a binary left from an earlier build could be stale).
fn binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/it-<hash>
            let dir = exe.parent().and_then(Path::parent).expect("the profile's directory");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .args(["build", "--quiet", "-p", "tollgate-cli", "--bin", "tollgate"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "cargo build -p tollgate-cli failed");
            dir.join("tollgate")
        })
        .clone()
}

/// A running `tollgate serve`; killed when dropped.
pub struct Serving {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Decisions its log says the fail mode answered (the store could not decide), by kind of
    /// store error.
    pub failed: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tollgate serve --listen 127.0.0.1:0` with `args`, and waits for its banner.
pub async fn serve(args: Vec<String>) -> Serving {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("tollgate serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("tollgate gateway on ").map(str::to_owned))
            .expect("the banner names the address");
        // The rest is read (so serve never blocks on a full pipe) for the log's fail-mode lines.
        let failed = Arc::new(Mutex::new(BTreeMap::new()));
        let tally = failed.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let line = plain(&line);
                if line.contains("applying fail mode") {
                    let kind = line.split("kind=").nth(1).and_then(|k| k.split_whitespace().next());
                    let kind = kind.unwrap_or("?").trim_matches('"').to_owned();
                    *tally.lock().expect("tally").entry(kind).or_insert(0) += 1;
                }
            }
        });
        Serving { child, base, failed }
    })
    .await
    .expect("started")
}

/// `line` without its terminal colour codes (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
