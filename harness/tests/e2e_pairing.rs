//! End to end with real processes: two machines pair with `tether invite` and `tether
//! accept` through a running `tether relay`, starting from node configs that have no
//! peer yet. Both must end with matching `[[peers]]` entries written into their own
//! config files (comments kept), and the two nodes started from them must carry a
//! message. A wrong secret, a garbled code and a tampered code must not pair, and
//! pairing devices that are paired already must be refused without `--force`. Pairing
//! while the nodes run must not disturb their own connections to the relay.
//!
//! Every process is killed when its guard drops. Nothing sleeps: every wait reads
//! output with a deadline (the wrong-secret case waits for the command's own timeout).

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

use common::{command, run, start_relay, tail, Proc, TETHER};
use tether_crypto::{PairingCode, PairingSecret, PublicKey};

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A relay admitting `a.key` and `b.key` (made here), and a node config for each with
/// the relay and no peer: `a.toml`, `b.toml`.
fn setup(d: &Path) -> Setup {
    setup_admitting(d, true)
}
struct Setup {
    _relay: Proc,
    a_public: String,
    b_public: String,
}

/// [`setup`], with `b.key` left off the relay's `allow` list unless `admit_b`.
fn setup_admitting(d: &Path, admit_b: bool) -> Setup {
    let relay_public = run(d, TETHER, &["keygen", "--out", "relay.key"])
        .trim()
        .to_string();
    let a_public = run(d, TETHER, &["keygen", "--out", "a.key"])
        .trim()
        .to_string();
    let b_public = run(d, TETHER, &["keygen", "--out", "b.key"])
        .trim()
        .to_string();
    let allow = if admit_b {
        format!("allow = [\"{a_public}\", \"{b_public}\"]")
    } else {
        format!("allow = [\"{a_public}\"]")
    };
    let (relay, relay_addr) = start_relay(d, &allow);
    for name in ["a", "b"] {
        let file = d.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "# device {name}: paired by tether invite / accept\nkey_file = \"{name}.key\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"{name}.sock\"\n\n[relay]\naddr = \"{relay_addr}\"  # the loopback relay\npublic_key = \"{relay_public}\"\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    Setup {
        _relay: relay,
        a_public,
        b_public,
    }
}

/// `tether invite --json` on `a.toml` with `extra` arguments: the running process and
/// its code.
fn invite(d: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["invite", "--json", "--config", "a.toml"];
    args.extend_from_slice(extra);
    let proc = Proc::start(d, "invite", TETHER, &args);
    let code = proc.wait_for(deadline(30), |l| json(l)["code"].as_str().map(String::from));
    (proc, code)
}

/// `tether accept CODE` on `b.toml` with `extra` arguments, to completion.
fn accept(d: &Path, code: &str, extra: &[&str]) -> Output {
    let mut args = vec!["accept", "--config", "b.toml"];
    args.extend_from_slice(extra);
    args.push(code);
    command(d, TETHER, &args).output().unwrap()
}

/// Asserts that `out` exited with `code` and said `text` on stderr.
fn fails_with(out: &Output, code: i32, text: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

/// Asserts that the invitation ended without a result, exit code 1, saying `text`.
fn invite_fails_with(inviting: &mut Proc, text: &str) {
    let (line, status) = invite_result(inviting);
    assert_eq!((line, status.code()), (None, Some(1)));
    let log = inviting.stderr_text();
    assert!(log.contains(text), "{}", tail(&log));
}

/// The invite's result line (None if it printed none) and its exit status.
fn invite_result(invite: &mut Proc) -> (Option<serde_json::Value>, std::process::ExitStatus) {
    let line = invite.next_line_before(deadline(30)).map(|l| json(&l));
    (line, invite.wait_for_exit(deadline(30)))
}

/// The `(public_key, relationship_key)` of every `[[peers]]` entry in a config.
fn peers(d: &Path, config: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(d.join(config)).unwrap();
    let value = |line: &str, key: &str| {
        line.strip_prefix(&format!("{key} = \""))
            .map(|rest| rest[..rest.find('"').unwrap()].to_string())
    };
    let keys: Vec<String> = text
        .lines()
        .filter_map(|l| value(l, "public_key"))
        .collect();
    let rks: Vec<String> = text
        .lines()
        .filter_map(|l| value(l, "relationship_key"))
        .collect();
    // The first public_key is the relay's.
    keys.into_iter().skip(1).zip(rks).collect()
}

#[test]
fn invite_and_accept_pair_two_fresh_configs_and_the_nodes_carry_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = setup(d);
    let (mut inviting, code) = invite(d, &["--name", "b"]);
    assert!(code.starts_with("tether1-"), "{code}");

    let accepted = accept(d, &code, &["--name", "a", "--json"]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let result = json(&String::from_utf8_lossy(&accepted.stdout));
    assert_eq!(result["paired"], true, "{result}");
    assert_eq!(result["peer"]["name"], "a");
    assert_eq!(result["peer"]["public_key"], s.a_public.as_str());
    assert_eq!(result["entry"], "added");
    assert_eq!(result["restart_required"], true);

    let (line, status) = invite_result(&mut inviting);
    assert!(status.success(), "{}", tail(&inviting.stderr_text()));
    let line = line.unwrap();
    assert_eq!(line["paired"], true, "{line}");
    assert_eq!(line["peer"]["public_key"], s.b_public.as_str());

    // Matching entries: each config names the other device, with one shared key.
    let at_a = peers(d, "a.toml");
    let at_b = peers(d, "b.toml");
    assert_eq!(at_a.len(), 1, "{at_a:?}");
    assert_eq!(at_b.len(), 1, "{at_b:?}");
    assert_eq!(at_a[0].0, s.b_public);
    assert_eq!(at_b[0].0, s.a_public);
    assert_eq!(at_a[0].1, at_b[0].1, "one relationship key for the pair");
    assert_eq!(at_a[0].1.len(), 64);
    // The files kept their comments and layout, and their mode.
    let a_text = std::fs::read_to_string(d.join("a.toml")).unwrap();
    assert!(a_text.starts_with("# device a: paired by tether invite / accept\n"));
    assert!(a_text.contains("  # the loopback relay\n"), "{a_text}");
    assert!(a_text.contains("[[peers]]\nname = \"b\"\n"), "{a_text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("a.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The code's secret is not the relationship key, and the relay never saw the key.
    assert!(!code.contains(&at_a[0].1));

    // The nodes start from the written configs and carry a message from A to B.
    let a = Proc::start(d, "a", TETHER, &["node", "--config", "a.toml"]);
    let b = Proc::start(d, "b", TETHER, &["node", "--config", "b.toml"]);
    for node in [&a, &b] {
        node.wait_for(deadline(30), |l| {
            l.starts_with("tether node ready:").then_some(())
        });
    }
    let watch_b = Proc::start(d, "watch-b", TETHER, &["watch", "--socket", "b.sock"]);
    watch_b.wait_for(deadline(30), |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });
    run(
        d,
        TETHER,
        &[
            "send",
            "--socket",
            "a.sock",
            "b",
            "hello from a paired device",
        ],
    );
    watch_b.wait_for(deadline(30), |l| {
        let e = json(l);
        (e["event"] == "delivered" && e["peer"] == "a")
            .then(|| assert_eq!(e["text"], "hello from a paired device", "{e}"))
    });

    // Pairing again while both nodes run: the pairing connections are rendezvous-only,
    // so they do not replace the nodes' own connections to the relay.
    let (mut inviting, code) = invite(d, &["--force"]);
    let out = accept(d, &code, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(invite_result(&mut inviting).1.success());
    for (node, socket) in [(&a, "a.sock"), (&b, "b.sock")] {
        let status = json(&run(d, TETHER, &["status", "--json", "--socket", socket]));
        assert_eq!(status["server_clients"]["relay"]["replaced"], 0, "{status}");
        assert_eq!(status["server_clients"]["relay"]["connects"], 1, "{status}");
        assert!(!node.stderr_text().contains("another connection proved"));
    }
}

#[test]
fn a_wrong_secret_a_garbled_code_or_a_tampered_code_does_not_pair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _s = setup(d);
    let (mut inviting, code) = invite(d, &["--timeout", "60s"]);
    let real = PairingCode::decode(&code).unwrap();
    let b_before = std::fs::read_to_string(d.join("b.toml")).unwrap();
    let a_before = std::fs::read_to_string(d.join("a.toml")).unwrap();

    // Another secret: the other device meets nobody and gives up at its timeout.
    let mut wrong = real.clone();
    wrong.secret = PairingSecret::generate(&mut rand::rngs::OsRng);
    let out = accept(d, &wrong.encode(), &["--timeout", "3s"]);
    fails_with(&out, 1, "the inviting device did not confirm");

    // A changed character: refused at once, as the user's mistake (exit 2).
    let mut garbled = code.clone().into_bytes();
    let at = garbled.len() / 2;
    garbled[at] = if garbled[at] == b'a' { b'b' } else { b'a' };
    let out = accept(d, &String::from_utf8(garbled).unwrap(), &[]);
    fails_with(&out, 2, "garbled");
    assert_eq!(stderr(&out).lines().count(), 1);

    // Another inviting key with a valid checksum (a deliberate forgery): the device
    // that answers to it sees records of another device and refuses, and the inviting
    // device, whose key the answer was not made for, ends the invitation.
    let mut tampered = real.clone();
    let c_public = run(d, TETHER, &["keygen", "--out", "c.key"]);
    tampered.inviter = PublicKey::from_hex(c_public.trim()).unwrap();
    let out = accept(d, &tampered.encode(), &["--timeout", "30s"]);
    fails_with(&out, 1, "come from another device than the code names");
    invite_fails_with(&mut inviting, "did not prove it holds the keys it claims");

    // Nothing was written on either side.
    assert_eq!(std::fs::read_to_string(d.join("b.toml")).unwrap(), b_before);
    assert_eq!(std::fs::read_to_string(d.join("a.toml")).unwrap(), a_before);
}

#[test]
fn pairing_again_is_refused_without_force_and_replaces_the_key_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _s = setup(d);
    let (mut inviting, code) = invite(d, &[]);
    let out = accept(d, &code, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(invite_result(&mut inviting).1.success());
    let first = peers(d, "a.toml");
    assert_eq!(first[0].1, peers(d, "b.toml")[0].1);

    // The accepting device has an entry for the inviter: refused before it connects,
    // so the invitation still waits.
    let (mut inviting, code) = invite(d, &[]);
    let out = accept(d, &code, &[]);
    fails_with(&out, 2, "has an entry for the inviting device already");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    // With --force there, the inviting device (without it) refuses in turn, and says so
    // to the other side.
    let out = accept(d, &code, &["--force"]);
    fails_with(
        &out,
        1,
        "the inviting device has an entry for this device already",
    );
    invite_fails_with(&mut inviting, "run `tether invite --force`");
    assert_eq!(peers(d, "a.toml"), first, "nothing replaced");

    // Both with --force: the relationship key is replaced in place on both sides.
    let (mut inviting, code) = invite(d, &["--force"]);
    let out = accept(d, &code, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replaced the relationship key"));
    let (line, status) = invite_result(&mut inviting);
    assert!(status.success());
    assert_eq!(line.unwrap()["entry"], "replaced");
    let at_a = peers(d, "a.toml");
    let at_b = peers(d, "b.toml");
    assert_eq!((at_a.len(), at_b.len()), (1, 1));
    assert_eq!(at_a[0].1, at_b[0].1);
    assert_ne!(at_a[0].1, first[0].1, "a new relationship key");
    assert_eq!(at_a[0].0, first[0].0);
}

#[test]
fn a_device_the_relay_does_not_admit_is_told_at_once_which_key_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = setup_admitting(d, false);
    let (_inviting, code) = invite(d, &[]);
    let started = Instant::now();
    let out = accept(d, &code, &["--timeout", "60s"]);
    fails_with(
        &out,
        1,
        &format!("does not admit this device (public key {})", s.b_public),
    );
    assert!(
        stderr(&out).contains("admission = \"open\""),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "told at once, not at the timeout: {:?}",
        started.elapsed()
    );
    assert!(peers(d, "b.toml").is_empty());
}
