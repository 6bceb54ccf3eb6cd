//! The `tether` command line: `--help` texts (snapshots), keygen and pair, and the
//! one-line errors that a bad config produces (snapshots, exit code 2, no panic).

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

fn tether(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(TETHER);
    command.args(args).current_dir(dir);
    // The test's own environment must not leak config overrides in.
    for (name, _) in std::env::vars() {
        if name.starts_with("TETHER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.env("RUST_BACKTRACE", "1");
    // A relay without `data_dir` keeps its queue in the test's folder.
    command.env("XDG_DATA_HOME", dir.join("xdg-data"));
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_texts() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = String::new();
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["keygen", "--help"],
        &["pair", "--help"],
        &["invite", "--help"],
        &["accept", "--help"],
        &["node", "--help"],
        &["relay", "--help"],
        &["status", "--help"],
        &["send", "--help"],
        &["watch", "--help"],
        &["migrate", "--help"],
        &["ping", "--help"],
        &["netcheck", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
        &["bench", "--help"],
        &["bench", "throughput", "--help"],
        &["bench", "handshake", "--help"],
        &["bench", "sessions", "--help"],
    ] {
        let out = tether(args, dir.path(), &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        all.push_str(&format!("$ tether {}\n{}\n", args.join(" "), stdout(&out)));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn keygen_writes_a_0600_key_file_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = tether(&["keygen", "--out", "k.key"], dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = stdout(&out).trim().to_string();
    assert_eq!(public.len(), 64);
    let file = dir.path().join("k.key");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(&format!("public {public}")));
    let again = tether(&["keygen", "--out", "k.key"], dir.path(), &[]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(stderr(&again).lines().count(), 1, "{}", stderr(&again));
    assert!(stderr(&again).contains("File exists"));
}

#[test]
fn pair_prints_matching_entries_and_writes_0600_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = tether(&["pair", "phone.key", "laptop.key"], dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for file in ["phone.key", "laptop.key"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let values = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .map(|l| l[..l.find('"').unwrap()].to_string())
            .collect()
    };
    let names = values("name");
    let publics = values("public_key");
    let rks = values("relationship_key");
    assert_eq!(names, ["laptop", "phone"], "{text}");
    assert_eq!(rks.len(), 2);
    assert_eq!(rks[0], rks[1], "one relationship key for the pair");
    let key_of = |file: &str| {
        std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("public ").map(String::from))
            .unwrap()
    };
    // Each config lists the other device.
    assert_eq!(publics, [key_of("laptop.key"), key_of("phone.key")]);
    // Pairing existing keys again reads them and makes a new relationship key.
    let again = tether(&["pair", "phone.key", "laptop.key"], dir.path(), &[]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("(existing)"));
    assert!(!stdout(&again).contains(&rks[0]));
}

/// A config with one valid peer, relay and key file, where `{KEY}` etc. are filled in.
const GOOD: &str = r#"key_file = "node.key"
listen = "127.0.0.1:0"
control_socket = "node.sock"

[relay]
addr = "127.0.0.1:7300"
public_key = "{RELAY}"

[[peers]]
name = "b"
public_key = "{PEER}"
relationship_key = "{RK}"
addresses = ["127.0.0.1:7001"]
"#;

/// A named config text and the environment it runs with.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

/// A folder's keys (`node.key`, `relay.key`, `peer.key`) and a valid node config using
/// them.
struct Setup {
    own: String,
    peer: String,
    rk: String,
    good: String,
}

fn setup(d: &Path) -> Setup {
    let key = |name: &str| {
        let out = tether(&["keygen", "--out", name], d, &[]);
        assert!(out.status.success());
        stdout(&out).trim().to_string()
    };
    let own = key("node.key");
    let relay = key("relay.key");
    let peer = key("peer.key");
    let rk = "ab".repeat(32);
    let good = GOOD
        .replace("{RELAY}", &relay)
        .replace("{PEER}", &peer)
        .replace("{RK}", &rk);
    Setup {
        own,
        peer,
        rk,
        good,
    }
}

#[test]
fn bad_configs_fail_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Setup {
        own,
        peer,
        rk,
        good,
    } = setup(d);
    let loose = d.join("loose.key");
    std::fs::copy(d.join("peer.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();

    let cases: Vec<Case> = vec![
        ("missing file", String::new(), vec![]),
        (
            "not TOML",
            good.replace("listen = \"127.0.0.1:0\"", "listen = 127.0.0.1:0"),
            vec![],
        ),
        (
            "misspelled key",
            good.replace("listen =", "lisen ="),
            vec![],
        ),
        (
            "no key_file",
            good.replace("key_file = \"node.key\"\n", ""),
            vec![],
        ),
        (
            "key file missing",
            good.replace("node.key", "nope.key"),
            vec![],
        ),
        (
            "key file readable by others",
            good.replace("node.key", "loose.key"),
            vec![],
        ),
        ("bad peer key", good.replace(&peer, &peer[..60]), vec![]),
        (
            "upper-case relationship key",
            good.replace(&rk, &rk.to_uppercase()),
            vec![],
        ),
        (
            "bad relay address",
            good.replace("127.0.0.1:7300", "relay.example.org"),
            vec![],
        ),
        (
            "bad listen type",
            good.replace("listen = \"127.0.0.1:0\"", "listen = 7000"),
            vec![],
        ),
        (
            "no peers",
            good[..good.find("[[peers]]").unwrap()].to_string(),
            vec![],
        ),
        ("own key as peer", good.replace(&peer, &own), vec![]),
        (
            "zero duration",
            format!("{good}\n[presence]\nmigration_window_ms = 0\n"),
            vec![],
        ),
        (
            "zero migration slots",
            format!("{good}\n[presence]\nmax_concurrent_migrations = 0\n"),
            vec![],
        ),
        (
            "unknown table key",
            format!("{good}\n[limits]\nmax_qeued = 10\n"),
            vec![],
        ),
        (
            "receive budget below four messages",
            format!("{good}\n[limits]\nreceive_budget = 100000\n"),
            vec![],
        ),
        (
            "bad env override",
            good.clone(),
            vec![("TETHER_PRESENCE__MIGRATION_WINDOW_MS", "soon")],
        ),
        (
            "env override of an unknown key",
            good.clone(),
            vec![("TETHER_LISTEN_ADDR", "127.0.0.1:1")],
        ),
        (
            "bad log format",
            good.replace("listen =", "log_format = \"xml\"\nlisten ="),
            vec![],
        ),
    ];
    let mut snapshot = String::new();
    for (i, (name, text, env)) in cases.iter().enumerate() {
        let file = format!("case{i}.toml");
        if !text.is_empty() {
            std::fs::write(d.join(&file), text).unwrap();
        }
        let out = tether(&["node", "--config", &file], d, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line, got:\n{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{name}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{name}");
        snapshot.push_str(&format!(
            "{name}:\n  {}",
            err.replace(&d.display().to_string(), "[DIR]")
        ));
    }
    insta::assert_snapshot!(snapshot);
}

#[test]
fn start_failures_are_one_line_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = setup(d).good;
    // A port that is taken for as long as the test runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap();
    let metrics_taken = format!("metrics_addr = \"{taken}\"\nlisten =");
    let cases = [
        (
            "node: control socket in a missing folder",
            "node",
            good.replace("node.sock", "missing/node.sock"),
            "error: cannot create control socket",
        ),
        (
            "node: metrics port in use",
            "node",
            good.replace("listen =", &metrics_taken),
            "error: cannot listen for metrics",
        ),
        (
            "relay: metrics port in use",
            "relay",
            format!(
                "key_file = \"relay.key\"\nadmission = \"open\"\nmetrics_addr = \"{taken}\"\nlisten = \"127.0.0.1:0\"\n"
            ),
            "error: cannot listen for metrics",
        ),
        (
            "relay: control socket in a missing folder",
            "relay",
            "key_file = \"relay.key\"\nadmission = \"open\"\ncontrol_socket = \"missing/relay.sock\"\nlisten = \"127.0.0.1:0\"\n"
                .to_string(),
            "error: cannot create control socket",
        ),
        (
            "relay: data_dir below a file",
            "relay",
            "key_file = \"relay.key\"\nadmission = \"open\"\ndata_dir = \"a-file/data\"\nlisten = \"127.0.0.1:0\"\n"
                .to_string(),
            "error: cannot create data directory",
        ),
        (
            "relay: a damaged queue store",
            "relay",
            "key_file = \"relay.key\"\nadmission = \"open\"\ndata_dir = \"damaged\"\nlisten = \"127.0.0.1:0\"\n"
                .to_string(),
            "error: cannot open relay queue store",
        ),
    ];
    std::fs::write(d.join("a-file"), "not a folder").unwrap();
    std::fs::create_dir_all(d.join("damaged/relay")).unwrap();
    std::fs::write(d.join("damaged/relay/queue.redb"), vec![0x5a; 64 * 1024]).unwrap();
    for (i, (name, command, text, expected)) in cases.iter().enumerate() {
        let file = format!("start{i}.toml");
        std::fs::write(d.join(&file), text).unwrap();
        std::fs::set_permissions(d.join(&file), std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = tether(&[command, "--config", &file], d, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line, got:\n{err}");
        assert!(err.starts_with(expected), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn a_relay_must_be_told_whom_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Setup { own, peer, .. } = setup(d);
    let base = "key_file = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(
        d.join("devices.txt"),
        format!("# laptop\n{own}\n\n{peer}  # phone\n"),
    )
    .unwrap();
    std::fs::write(d.join("bad-devices.txt"), format!("{own}\nnot-a-key\n")).unwrap();
    let refused = [
        (
            "nothing said",
            String::new(),
            "key `admission`: missing: list the devices",
        ),
        (
            "empty allowlist",
            "allow = []\n".to_string(),
            "key `admission`: missing",
        ),
        (
            "explicit allowlist without keys",
            "admission = \"allowlist\"\n".to_string(),
            "key `allow`: the allowlist is empty",
        ),
        (
            "open with an allowlist",
            format!("admission = \"open\"\nallow = [\"{own}\"]\n"),
            "key `allow`: not used with admission = \"open\"",
        ),
        (
            "unknown mode",
            "admission = \"closed\"\n".to_string(),
            "key `admission`: expected \"allowlist\" or \"open\"",
        ),
        (
            "bad key",
            format!("allow = [\"{}\"]\n", &own[..60]),
            "key `allow[0]`",
        ),
        (
            "bad key in the file",
            "allow_file = \"bad-devices.txt\"\n".to_string(),
            "bad-devices.txt line 2",
        ),
        (
            "missing file",
            "allow_file = \"nope.txt\"\n".to_string(),
            "key `allow_file`: cannot read",
        ),
    ];
    for (i, (name, extra, expected)) in refused.iter().enumerate() {
        let file = format!("refused{i}.toml");
        std::fs::write(d.join(&file), format!("{base}{extra}")).unwrap();
        // `--check` refuses it, and the relay does not start (checked second: a relay
        // that did start would not return).
        for args in [
            &["relay", "--config", &file, "--check"][..],
            &["relay", "--config", &file],
        ] {
            let out = tether(args, d, &[]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{name}: one line, got:\n{err}");
            assert!(err.contains(expected), "{name}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
        }
    }
    let accepted = [
        (
            format!("allow = [\"{own}\"]\n"),
            "serves an allowlist of 1 device,",
        ),
        (
            "allow_file = \"devices.txt\"\n".to_string(),
            "serves an allowlist of 2 devices,",
        ),
        (
            format!("allow = [\"{own}\"]\nallow_file = \"devices.txt\"\n"),
            "serves an allowlist of 2 devices,",
        ),
        (
            "admission = \"open\"\n".to_string(),
            "serves any device that proves a key (admission = \"open\")",
        ),
    ];
    for (i, (extra, expected)) in accepted.iter().enumerate() {
        let file = format!("accepted{i}.toml");
        std::fs::write(d.join(&file), format!("{base}{extra}")).unwrap();
        let out = tether(&["relay", "--config", &file, "--check"], d, &[]);
        assert!(out.status.success(), "{extra}: {}", stderr(&out));
        assert!(stdout(&out).contains(expected), "{extra}: {}", stdout(&out));
    }
    // From the environment, as a comma-separated list.
    std::fs::write(d.join("env.toml"), base).unwrap();
    let keys = format!("{own},{peer}");
    let out = tether(
        &["relay", "--config", "env.toml", "--check"],
        d,
        &[("TETHER_ALLOW", keys.as_str())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("serves an allowlist of 2 devices,"));
}

#[test]
fn check_finds_what_would_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = setup(d).good;
    // Ports that are taken for as long as the test runs.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = tcp.local_addr().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = udp.local_addr().unwrap();
    let cases = [
        (
            "node",
            good.replace("node.sock", "missing/node.sock"),
            "control_socket missing/node.sock: folder missing does not exist",
        ),
        (
            "node",
            good.replace("listen =", &format!("metrics_addr = \"{tcp}\"\nlisten =")),
            "cannot listen",
        ),
        (
            "node",
            good.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{udp}\"")),
            "cannot bind",
        ),
        (
            "relay",
            format!("key_file = \"relay.key\"\nadmission = \"open\"\nmetrics_addr = \"{tcp}\"\nlisten = \"127.0.0.1:0\"\n"),
            "cannot listen",
        ),
        (
            "relay",
            "key_file = \"relay.key\"\nadmission = \"open\"\ncontrol_socket = \"missing/relay.sock\"\nlisten = \"127.0.0.1:0\"\n"
                .to_string(),
            "folder missing does not exist",
        ),
        (
            "node",
            format!("data_dir = \"a-file\"\n{good}"),
            "a-file is not a folder",
        ),
    ];
    std::fs::write(d.join("a-file"), "").unwrap();
    for (i, (command, text, expected)) in cases.iter().enumerate() {
        let file = format!("check{i}.toml");
        std::fs::write(d.join(&file), text).unwrap();
        std::fs::set_permissions(d.join(&file), std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = tether(&[command, "--config", &file, "--check"], d, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert_eq!(err.lines().count(), 1, "case {i}: one line, got:\n{err}");
        assert!(err.contains(expected), "case {i}: {err}");
        assert!(err.contains(&file), "case {i} names the file: {err}");
        assert!(stdout(&out).is_empty(), "case {i}: no 'config ok'");
    }
    // The good config still checks out.
    std::fs::write(d.join("good.toml"), &good).unwrap();
    std::fs::set_permissions(d.join("good.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tether(&["node", "--config", "good.toml", "--check"], d, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Checked before a restart: the running node answers on the control socket and
    // holds the port, which is then not a problem.
    let running = good.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{udp}\""));
    std::fs::write(d.join("running.toml"), running).unwrap();
    std::fs::set_permissions(
        d.join("running.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let _node = std::os::unix::net::UnixListener::bind(d.join("node.sock")).unwrap();
    let out = tether(&["node", "--config", "running.toml", "--check"], d, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "note: listen {udp} is in use, presumably by the process answering on node.sock"
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["demo", "--scenario", "nope"][..],
        &["send", "b", "--socket", "x.sock"],
        &["send", "b", "hi", "--file", "f", "--socket", "x.sock"],
        &["completions", "tcsh"],
        &["migrate", "--bind", "somewhere", "--socket", "x.sock"],
        &["frobnicate"],
    ] {
        let out = tether(args, dir.path(), &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
    // A node that is not running is a runtime failure, named clearly.
    let out = tether(&["status", "--socket", "gone.sock"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is the node running?"),
        "{}",
        stderr(&out)
    );
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_example_configs_are_valid_and_env_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for file in ["node-laptop.toml", "node-phone.toml", "relay.toml"] {
        std::fs::copy(repo().join("examples").join(file), d.join(file)).unwrap();
        std::fs::set_permissions(d.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for key in ["laptop.key", "phone.key", "relay.key"] {
        assert!(tether(&["keygen", "--out", key], d, &[]).status.success());
    }
    for (command, file) in [
        ("node", "node-laptop.toml"),
        ("node", "node-phone.toml"),
        ("relay", "relay.toml"),
    ] {
        let out = tether(&[command, "--config", file, "--check"], d, &[]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        assert!(stdout(&out).starts_with("config ok:"), "{file}");
    }
    let out = tether(
        &["node", "--config", "node-phone.toml", "--check"],
        d,
        &[("TETHER_LISTEN", "127.0.0.1:7999")],
    );
    assert!(
        stdout(&out).contains("listens on 127.0.0.1:7999"),
        "{}",
        stdout(&out)
    );
    // TETHER_CONFIG names the file.
    let out = tether(
        &["node", "--check"],
        d,
        &[("TETHER_CONFIG", "node-phone.toml")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_key_of_the_full_example_is_documented() {
    let example = std::fs::read_to_string(repo().join("examples/node-laptop.toml")).unwrap();
    let docs = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let mut table = String::new();
    let mut keys = 0;
    for line in example.lines() {
        if let Some(name) = line.strip_prefix('[') {
            table = name.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.starts_with('#') {
            continue;
        }
        let full = match table.as_str() {
            "" => key.to_string(),
            "peers" => format!("peers[].{key}"),
            t => format!("{t}.{key}"),
        };
        assert!(
            docs.contains(&format!("`{full}`")),
            "docs/config.md lacks `{full}`"
        );
        keys += 1;
    }
    assert!(keys >= 20, "{keys} keys found");
}

/// `text` with `dir`, every 64-hex key and 16-hex device id replaced, for a snapshot.
fn redact(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "[DIR]");
    let hex = |run: &str| match run.len() {
        64 => "[KEY]".to_string(),
        16 => "[ID]".to_string(),
        _ => run.to_string(),
    };
    let mut out = String::new();
    let mut run = String::new();
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(&hex(&run));
        run.clear();
        out.push(c);
    }
    out.push_str(&hex(&run));
    out
}

#[test]
fn completions_and_man_page_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = tether(&["completions", shell], dir.path(), &[]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in [
            "keygen",
            "status",
            "migrate",
            "completions",
            "stdin-lines",
            "invite",
            "accept",
            "bench",
            "throughput",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = tether(&["man"], dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH tether 1"), "{page}");
    for command in [
        "keygen", "pair", "invite", "accept", "node", "relay", "status", "send", "watch", "ping",
        "netcheck", "migrate", "bench",
    ] {
        assert!(
            page.contains(&format!("tether\\-{command}(1)"))
                || page.contains(&format!("\\fB{command}\\fR")),
            "the man page lacks {command}"
        );
    }
    // With --json, each is one object holding the same text.
    let out = tether(&["man", "--json"], dir.path(), &[]);
    let object: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(object["man"].as_str(), Some(page.as_str()));
    let bash = stdout(&tether(&["completions", "bash"], dir.path(), &[]));
    let out = tether(&["completions", "bash", "--json"], dir.path(), &[]);
    let object: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(object["script"].as_str(), Some(bash.as_str()));
}

#[test]
fn json_output_is_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut snapshot = String::new();
    let Setup { good, .. } = setup(d);
    std::fs::write(d.join("good.toml"), &good).unwrap();
    std::fs::set_permissions(d.join("good.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        d.join("relay.toml"),
        "key_file = \"relay.key\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"relay-data\"\nadmission = \"open\"\n",
    )
    .unwrap();
    for args in [
        &["keygen", "--out", "new.key", "--json"][..],
        &["--json", "pair", "x.key", "y.key"],
        &[
            "--json",
            "pair",
            "--key",
            "z.key",
            "--peer",
            "a38ed4f09f87be14b1882037908926369aaf23e96e26ce2ebbe6deca5afcaa1b",
        ],
        &["node", "--config", "good.toml", "--check", "--json"],
        &["relay", "--config", "relay.toml", "--check", "--json"],
    ] {
        let out = tether(args, d, &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value.is_object(), "{args:?}: {text}");
        snapshot.push_str(&format!(
            "$ tether {}\n{}",
            args.join(" "),
            redact(&text, d)
        ));
    }
    insta::assert_snapshot!(snapshot);
}

#[test]
fn send_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("huge.bin"), vec![0_u8; 70_000]).unwrap();
    let mut snapshot = String::new();
    for args in [
        &["send", "b", "--socket", "x.sock"][..],
        &["send", "b", "--file", "huge.bin", "--socket", "x.sock"],
        &["send", "b", "--file", "missing.bin", "--socket", "x.sock"],
        &["send", "b", "--stdin-lines", "--socket", "x.sock"],
        &["send", "b", "--file", "-", "--socket", "x.sock", "--wait"],
    ] {
        let out = tether(args, d, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        snapshot.push_str(&format!(
            "$ tether {} -> exit {:?}\n{}\n",
            args.join(" "),
            out.status.code(),
            redact(first, d)
        ));
    }
    insta::assert_snapshot!(snapshot);
}

#[test]
fn defaults_follow_xdg_when_no_config_or_socket_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = setup(d).good;
    let config_home = d.join("config");
    let runtime = d.join("runtime");
    std::fs::create_dir_all(config_home.join("tether")).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    let env = [
        ("HOME", d.to_str().unwrap()),
        ("XDG_CONFIG_HOME", config_home.to_str().unwrap()),
        ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
    ];
    // No config anywhere: the error says where it looked.
    let out = tether(&["node", "--check"], d, &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        redact(&stderr(&out), d).starts_with(
            "error: no config given (--config FILE or TETHER_CONFIG) and none at [DIR]/config/tether/node.toml or /etc/tether/node.toml"
        ),
        "{}",
        stderr(&out)
    );
    // A client without a config looks for the user's socket.
    let out = tether(&["status"], d, &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "control socket {}/tether/node.sock",
            runtime.display()
        )),
        "{}",
        stderr(&out)
    );
    // The user's config, without control_socket: the socket goes in the runtime folder,
    // which is made 0700.
    let config = config_home.join("tether/node.toml");
    let keys = d.display().to_string();
    std::fs::write(
        &config,
        good.replace("control_socket = \"node.sock\"\n", "")
            .replace("\"node.key\"", &format!("\"{keys}/node.key\"")),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tether(&["node", "--check"], d, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "control socket {}/tether/node.sock",
            runtime.display()
        )),
        "{}",
        stdout(&out)
    );
    let mode = std::fs::metadata(runtime.join("tether"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // The client reads the same default config.
    let out = tether(&["status"], d, &env);
    assert!(
        stderr(&out).contains(&format!("{}/tether/node.sock", runtime.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_relay_host_name_that_does_not_resolve_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = setup(d).good;
    // `.invalid` never resolves (RFC 6761).
    std::fs::write(
        d.join("n.toml"),
        good.replace("127.0.0.1:7300", "relay.tether.invalid:7300"),
    )
    .unwrap();
    std::fs::set_permissions(d.join("n.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tether(&["node", "--config", "n.toml", "--check"], d, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "error: n.toml: key `relay.addr`: \"relay.tether.invalid:7300\" does not resolve: "
        ),
        "{err}"
    );
    // A name that resolves is taken, and --check shows what it resolved to.
    std::fs::write(
        d.join("n.toml"),
        good.replace("127.0.0.1:7300", "localhost:7300"),
    )
    .unwrap();
    let out = tether(&["node", "--config", "n.toml", "--check"], d, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("relay localhost:7300 (127.0.0.1:7300)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn pair_with_a_public_key_creates_only_this_devices_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let peer = {
        let out = tether(&["keygen", "--out", "peer.key"], d, &[]);
        stdout(&out).trim().to_string()
    };
    let out = tether(&["pair", "--key", "mine.key", "--peer", &peer], d, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mine = std::fs::read_to_string(d.join("mine.key")).unwrap();
    let mine = mine
        .lines()
        .find_map(|l| l.strip_prefix("public "))
        .unwrap()
        .to_string();
    let entries: Vec<&str> = text.split("# --- in ").skip(1).collect();
    assert_eq!(entries.len(), 2, "{text}");
    assert!(entries[0].starts_with("mine's config (key_file = \"mine.key\")"));
    assert!(entries[0].contains(&format!("public_key = \"{peer}\"")));
    assert!(entries[1].starts_with("the peer's config"));
    assert!(entries[1].contains(&format!("public_key = \"{mine}\"")));
    let rk = |entry: &str| {
        entry
            .lines()
            .find_map(|l| l.strip_prefix("relationship_key = \""))
            .map(|l| l[..64].to_string())
            .unwrap()
    };
    assert_eq!(rk(entries[0]), rk(entries[1]));
    assert!(text.contains(&format!("allow = [\"{mine}\", \"{peer}\"]")));
    // The first positional names this device's key file too, and only it is read.
    let out = tether(&["pair", "mine.key", "--peer", &peer], d, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(existing)"));
    assert!(stdout(&out).contains("replaces the old one"));
    let files: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".key") || n.len() == 64)
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(files, ["mine.key", "peer.key"]);
}

#[test]
fn pairing_mistakes_are_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Setup { own, good, .. } = setup(d);
    std::fs::write(d.join("node.toml"), &good).unwrap();
    std::fs::set_permissions(d.join("node.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let hex = "a38ed4f09f87be14b1882037908926369aaf23e96e26ce2ebbe6deca5afcaa1b";
    // A real code, for the variants below.
    let code = {
        let mut rng = rand::rngs::OsRng;
        let key = tether_crypto::PublicKey::from_hex(hex).unwrap();
        tether_crypto::PairingCode::new(key, "127.0.0.1:9", key, &mut rng)
            .unwrap()
            .encode()
            .to_string()
    };
    let garbled = {
        let mut bytes = code.clone().into_bytes();
        let at = bytes.len() / 2;
        bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
        String::from_utf8(bytes).unwrap()
    };
    let own_code = {
        let mut rng = rand::rngs::OsRng;
        let key = tether_crypto::PublicKey::from_hex(&own).unwrap();
        tether_crypto::PairingCode::new(key, "127.0.0.1:9", key, &mut rng)
            .unwrap()
            .encode()
            .to_string()
    };
    let before = std::fs::read_to_string(d.join("node.toml")).unwrap();
    let mut snapshot = String::new();
    for args in [
        &["pair", "x.key", hex][..],
        &["pair", "--key", "x.key", "--peer", "abc123"],
        &["pair", "--key", "x.key", "--peer", &"00".repeat(32)],
        &["pair", "--key", "node.key", "--peer", &own],
        &["pair", "x.key", "y.key", "--peer", hex],
        &["accept", "--config", "node.toml", "hello"],
        &[
            "accept",
            "--config",
            "node.toml",
            &code.replacen("tether1-", "tether7-", 1),
        ],
        &["accept", "--config", "node.toml", &code[..code.len() - 30]],
        &["accept", "--config", "node.toml", &garbled],
        &[
            "accept",
            "--config",
            "node.toml",
            &format!("{}!", &code[..20]),
        ],
        &["accept", "--config", "node.toml", &own_code],
        &["accept", "--config", "node.toml", "--name", "b", &code],
        &["accept", "--config", "node.toml", "--timeout", "0s", &code],
        &["invite", "--config", "missing.toml"],
    ] {
        let out = tether(args, d, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if !args.contains(&"--timeout") && !args.contains(&"x.key") {
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("tether") && a.len() > 40 {
                    format!("{}…", &a[..8])
                } else {
                    a.to_string()
                }
            })
            .collect();
        snapshot.push_str(&format!(
            "$ tether {}\n{}\n",
            redact(&shown.join(" "), d),
            redact(&err, d).lines().next().unwrap_or_default()
        ));
    }
    insta::assert_snapshot!(snapshot);
    // Nothing was created, and the config is untouched.
    assert!(!d.join("x.key").exists());
    assert!(!d.join(hex).exists());
    assert_eq!(
        std::fs::read_to_string(d.join("node.toml")).unwrap(),
        before
    );
}
