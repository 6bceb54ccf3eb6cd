//! Helpers shared by the end-to-end tests that run real `tether` processes: starting a
//! process whose output is read line by line, waiting for a line with a deadline (never
//! a sleep), and killing every process when the test ends, even on failure.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod hostile;
pub mod netns;
pub mod nodes;
pub mod relay_device;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// The binary under test.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// `program args…`, run in `dir` without the test's TETHER_* variables.
pub fn command(dir: &Path, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    // A relay without `data_dir` keeps its queue in the test's folder, never in the
    // user's (and two tests' relays never share a store).
    command.env("XDG_DATA_HOME", dir.join("xdg-data"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TETHER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a short command to completion; panics with its stderr if it fails.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = command(dir, program, args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A long-running process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `program args…` in `dir`; its stderr goes to `dir/NAME.stderr`.
    pub fn start(dir: &Path, name: &str, program: &str, args: &[&str]) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = command(dir, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name: name.into(),
            child,
            lines,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits, until `deadline`, for the process to close its output and exit; its exit
    /// status. Lines it still prints are dropped.
    pub fn wait_for_exit(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}: still running at the deadline", self.name)
                }
            }
        }
    }

    /// Sends SIGTERM (the orderly stop) and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().unwrap()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The next stdout line if one comes before `deadline` (for checking that nothing
    /// more comes).
    pub fn next_line_before(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    /// The next stdout line for which `wanted` returns Some, before `deadline`.
    pub fn wait_for<T>(&self, deadline: Instant, mut wanted: impl FnMut(&str) -> Option<T>) -> T {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = wanted(&line) {
                        return found;
                    }
                }
                Err(_) => panic!(
                    "{}: the awaited line did not come; stderr:\n{}",
                    self.name,
                    tail(&self.stderr_text())
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines of a text.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The value of `key=value` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

/// The relay's `allow` line for both devices of a pairing (`tether pair`'s output).
pub fn relay_allow(pairing: &str) -> String {
    pairing
        .lines()
        .find_map(|l| l.strip_prefix("# in the relay's config, to admit both devices: "))
        .expect("tether pair prints the relay's allow line")
        .to_string()
}

/// Starts `tether relay` in `dir` with key file `relay.key` on a loopback port and the
/// admission line `admission` (`allow = [...]`, say), its config in `relay.toml`; the
/// process and the address it listens on, once it is ready.
pub fn start_relay(dir: &Path, admission: &str) -> (Proc, String) {
    std::fs::write(
        dir.join("relay.toml"),
        format!("key_file = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n{admission}\n"),
    )
    .unwrap();
    let relay = Proc::start(dir, "relay", TETHER, &["relay", "--config", "relay.toml"]);
    let addr = relay.wait_for(Instant::now() + std::time::Duration::from_secs(30), |l| {
        l.starts_with("tether relay ready:")
            .then(|| field(l, "listen").unwrap().to_string())
    });
    (relay, addr)
}

/// What every two-node end-to-end test starts from, in `dir`: a relay key and a
/// running `tether relay` on loopback, and a pair of device keys (`a.key`, `b.key`)
/// with their relationship, from `tether keygen` and `tether pair`.
pub struct Deployment {
    /// The running relay (killed on drop).
    pub relay: Proc,
    /// Where it listens (`ip:port`).
    pub relay_addr: String,
    /// Its public key (hex).
    pub relay_public: String,
    /// `tether pair`'s output, one section per device.
    pairing: String,
}

impl Deployment {
    /// Generates the keys and starts the relay (its control socket `relay.sock`),
    /// admitting both devices (the `allow` line `tether pair` prints).
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "127.0.0.1:0", |args| {
            Proc::start(dir, "relay", TETHER, args)
        })
    }

    /// [`start`](Self::start) with the relay listening on `listen`, its process started
    /// by `spawn` from the `tether` arguments (in a network namespace, say).
    pub fn start_with(dir: &Path, listen: &str, spawn: impl FnOnce(&[&str]) -> Proc) -> Self {
        let relay_public = run(dir, TETHER, &["keygen", "--out", "relay.key"])
            .trim()
            .to_string();
        let pairing = run(dir, TETHER, &["pair", "a.key", "b.key"]);
        std::fs::write(
            dir.join("relay.toml"),
            format!(
                "key_file = \"relay.key\"\nlisten = \"{listen}\"\ncontrol_socket = \"relay.sock\"\n{}\n",
                relay_allow(&pairing)
            ),
        )
        .unwrap();
        let relay = spawn(&["relay", "--config", "relay.toml"]);
        let relay_addr = relay.wait_for(Instant::now() + std::time::Duration::from_secs(30), |l| {
            l.starts_with("tether relay ready:")
                .then(|| field(l, "listen").unwrap().to_string())
        });
        Self {
            relay,
            relay_addr,
            relay_public,
            pairing,
        }
    }

    /// The `[[peers]]` entry `tether pair` printed for `who`'s config (`"a"` or `"b"`).
    pub fn peers_entry(&self, who: &str) -> String {
        peers_entry(&self.pairing, who)
    }

    /// A node config: key file `KEY.key`, control socket `SOCKET.sock`, `listen`, any
    /// `extra` top-level lines, this relay, then `peers`.
    pub fn node_config(
        &self,
        socket: &str,
        key: &str,
        listen: &str,
        extra: &str,
        peers: &str,
    ) -> String {
        node_config(
            (&self.relay_addr, &self.relay_public),
            socket,
            key,
            listen,
            extra,
            peers,
        )
    }
}

/// The `[[peers]]` entry for `who`'s config in the output of `tether pair`.
pub fn peers_entry(pairing: &str, who: &str) -> String {
    pairing
        .split("# --- in ")
        .find(|s| s.starts_with(&format!("{who}'s config")))
        .map(|s| s.split_once('\n').unwrap().1.to_string())
        .unwrap()
}

/// A node config: key file `KEY.key`, control socket `SOCKET.sock`, `listen`, any
/// `extra` top-level lines, the relay (address, public key), then `peers`.
pub fn node_config(
    (relay_addr, relay_public): (&str, &str),
    socket: &str,
    key: &str,
    listen: &str,
    extra: &str,
    peers: &str,
) -> String {
    format!(
        "key_file = \"{key}.key\"\nlisten = \"{listen}\"\ncontrol_socket = \"{socket}.sock\"\n{extra}\n[relay]\naddr = \"{relay_addr}\"\npublic_key = \"{relay_public}\"\n\n{peers}"
    )
}

/// Nodes whose relay never answers: the configured relay address is a UDP socket this
/// test holds and never reads. The only way between two such nodes is a direct link
/// one of them dials, so a session that is Ready shows that the dialled node accepted.
pub struct DirectOnly {
    _silent: std::net::UdpSocket,
    relay_addr: String,
    relay_public: String,
}

impl DirectOnly {
    /// Binds the silent socket and makes a relay key nobody uses, in `dir`.
    pub fn new(dir: &Path) -> Self {
        let relay_public = run(dir, TETHER, &["keygen", "--out", "silent-relay.key"])
            .trim()
            .to_string();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Self {
            relay_addr: silent.local_addr().unwrap().to_string(),
            _silent: silent,
            relay_public,
        }
    }

    /// The silent relay (address, public key), for [`node_config`].
    pub fn relay(&self) -> (&str, &str) {
        (&self.relay_addr, &self.relay_public)
    }
}

/// The page `GET /metrics` returns at `addr` (`ip:port`), status line included.
pub fn metrics_page(addr: &str) -> String {
    use std::io::Write;
    let mut http = std::net::TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    page
}
