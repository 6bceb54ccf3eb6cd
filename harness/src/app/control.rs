//! The control socket: a Unix socket on which a running node (or relay) answers JSON
//! lines. One request per connection, one JSON object per line.
//!
//! Requests (`{"cmd": …}`):
//! - `{"cmd":"status"}` → `{"ok":true,"status":{…}}` (a node's
//!   [`NodeStatusReport`](super::metrics::NodeStatusReport)) or `{"ok":true,"relay":{…}}`
//! - `{"cmd":"send","peer":"NAME","text":"…"}` → `{"ok":true,"peer":"NAME","seq":N}`; the
//!   payload as `"data":"BASE64"` instead of `text` for any bytes; with `"wait":true`
//!   the node waits for room in a full queue instead of answering "queue full".
//! - `{"cmd":"send_stream","peer":"NAME"}` → `{"ok":true,"peer":"NAME","streaming":true}`,
//!   then the client writes one message per line (`{"text":"…"}` or `{"data":"BASE64"}`)
//!   and the node answers each with `{"ok":true,"seq":N}` in order, waiting for room in
//!   a full queue (never "queue full"); when the client shuts its writing side the node
//!   answers `{"ok":true,"done":true,"sent":N}` and closes. An error answer ends the
//!   stream: the messages answered before it were accepted, the rest were not.
//! - `{"cmd":"migrate","bind":"127.0.0.2"}` → `{"ok":true,"old":"…","new":"…"}`
//! - `{"cmd":"ping","peer":"NAME","timeout_ms":2000}` → one round trip over the session
//!   (a liveness ping sealed under the session keys, answered by the peer's session
//!   layer): `{"ok":true,"peer":"NAME","answered":true,"rtt_ms":0.42,"path":"direct",
//!   "remote":"ip:port"}`, or `{"ok":true,"peer":"NAME","answered":false,
//!   "unanswered":"no_session"|"timeout","reason":"…"}` (a timeout also names the `path`
//!   the ping went on). `timeout_ms` defaults to [`DEFAULT_PING_TIMEOUT`], at most
//!   [`MAX_PING_TIMEOUT`].
//! - `{"cmd":"watch"}` → `{"ok":true,"watching":true}`, then one [`WatchEvent`] per
//!   line until the client goes away: first the current status of every peer, then
//!   every event as it happens.
//!
//! Errors are `{"ok":false,"error":"…"}`. Fields added later are optional, so a client
//! written for an older node's requests still works.

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest request line a server reads (a `send` with the largest message, as JSON).
pub const MAX_REQUEST_LINE: usize = 256 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The full status report.
    Status,
    /// Send a message to a peer.
    Send {
        /// Peer name, full public key hex, or a unique prefix of it.
        peer: String,
        /// The message, as text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The message, as base64 (any bytes); instead of `text`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// Wait for room while the peer's queue is full (instead of an error).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait: bool,
    },
    /// Send many messages to a peer over this connection: one [`StreamMessage`] per
    /// line follows the request.
    SendStream {
        /// Peer name, full public key hex, or a unique prefix of it.
        peer: String,
    },
    /// Stream events and delivered messages.
    Watch,
    /// Manual network change: rebind the endpoint.
    Migrate {
        /// `IP` (any port) or `IP:PORT`.
        bind: String,
    },
    /// One round trip over the session with a peer.
    Ping {
        /// Peer name, full public key hex, or a unique prefix of it.
        peer: String,
        /// How long to wait for the answer (default [`DEFAULT_PING_TIMEOUT`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// How long a ping waits for its answer unless told.
pub const DEFAULT_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest a ping may wait (well within [`REQUEST_TIMEOUT`]).
pub const MAX_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// One message of a `send_stream`: `text` or `data` (base64).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamMessage {
    /// The message, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The message, as base64 (any bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl StreamMessage {
    /// A message of `bytes`: as text when they are UTF-8 (shorter on the wire), else
    /// as base64.
    pub fn of(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => Self {
                text: Some(text),
                data: None,
            },
            Err(error) => Self {
                text: None,
                data: Some(BASE64.encode(error.as_bytes())),
            },
        }
    }
}

/// The bytes of a message given as `text` or `data` (base64): exactly one of them.
pub fn payload_of(text: Option<String>, data: Option<&str>) -> Result<Vec<u8>, String> {
    match (text, data) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(data)) => BASE64
            .decode(data.as_bytes())
            .map_err(|e| format!("`data` is not base64: {e}")),
        (Some(_), Some(_)) => Err("give `text` or `data`, not both".into()),
        (None, None) => Err("no message: give `text` or `data`".into()),
    }
}

/// One line of `tether watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// A peer's session status changed (or, at the start of a watch, is).
    Status {
        /// Peer name.
        peer: String,
        /// Previous status.
        from: Option<String>,
        /// New status.
        to: String,
        /// Unix time in ms.
        at_ms: u64,
    },
    /// A session was bound to a path.
    Ready {
        /// Peer name.
        peer: String,
        /// Epoch.
        epoch: u64,
        /// `direct` or `relay`.
        path: String,
        /// The peer's address on a direct path.
        remote: Option<String>,
        /// Whether a handshake produced it.
        after_handshake: bool,
        /// Whether that handshake was a rekey of the live session (only the keys
        /// changed).
        #[serde(default)]
        rekey: bool,
        /// Unix time in ms.
        at_ms: u64,
    },
    /// A migration finished.
    MigrationCompleted {
        /// Peer name.
        peer: String,
        /// Whether this device moved.
        outbound: bool,
        /// From the change (or the signal) to Ready.
        duration_ms: u64,
        /// Unix time in ms.
        at_ms: u64,
    },
    /// A message from a peer reached the application.
    Delivered {
        /// Peer name.
        peer: String,
        /// Channel.
        channel: u32,
        /// Sequence number in the channel.
        seq: u64,
        /// The payload as text, when it is valid UTF-8 (absent otherwise: `data` is
        /// always there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The payload, exactly, as base64.
        #[serde(default)]
        data: String,
        /// Payload length in bytes.
        len: usize,
        /// Unix time in ms.
        at_ms: u64,
    },
    /// This node's endpoint moved (a manual migrate or an interface change).
    Rebound {
        /// Old local address.
        old: String,
        /// New local address.
        new: String,
        /// `manual` or `interface`.
        cause: String,
        /// Unix time in ms.
        at_ms: u64,
    },
    /// The watcher fell behind and missed events.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

/// Why a control request failed on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached.
    #[error("cannot connect to control socket {path}: {source} (is the node running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS's error.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS's error.
        source: io::Error,
    },
    /// The server closed without answering.
    #[error("control socket {0}: closed without an answer")]
    NoAnswer(PathBuf),
    /// The node closed a watch: it stopped (or crashed).
    #[error("control socket {0}: the node went away")]
    NodeGone(PathBuf),
    /// The answer is not JSON.
    #[error("control socket {path}: bad answer: {reason}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The server refused the request.
    #[error("{0}")]
    Refused(String),
    /// The server refused a message of a stream; those before it were accepted.
    #[error("{error} ({accepted} messages before it were accepted)")]
    StreamRefused {
        /// Messages accepted before the refusal.
        accepted: u64,
        /// The server's error.
        error: String,
    },
    /// The messages to stream could not be read.
    #[error(
        "cannot read the messages to send: {source} ({accepted} messages before it were accepted)"
    )]
    Input {
        /// Messages accepted before the input failed.
        accepted: u64,
        /// The read error.
        source: io::Error,
    },
}

/// Client: connects, sends `request`, returns the stream positioned after the request.
async fn open(path: &Path, request: &Request) -> Result<BufReader<UnixStream>, ControlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut line = serde_json::to_string(request).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(BufReader::new(stream))
}

async fn read_reply(
    path: &Path,
    reader: &mut BufReader<UnixStream>,
) -> Result<serde_json::Value, ControlError> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .await
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if n == 0 {
        return Err(ControlError::NoAnswer(path.to_path_buf()));
    }
    parse_reply(path, &line)
}

/// An answer line: `{"ok":true,…}`, or the error it carried.
fn parse_reply(path: &Path, line: &str) -> Result<serde_json::Value, ControlError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ControlError::BadAnswer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if value.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        Ok(value)
    } else {
        let error = value
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("request refused")
            .to_string();
        Err(ControlError::Refused(error))
    }
}

/// How long a client waits for a node to answer a request. A node answers within
/// milliseconds; one that does not within this is hung.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Client: one request, one answer (`{"ok":true,…}`), or the error it carried.
pub async fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let exchange = async {
        let mut reader = open(path, request).await?;
        read_reply(path, &mut reader).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            ),
        })?
}

/// Client: one request whose answer may take as long as it takes (a send that waits
/// for room in a full queue), so without [`REQUEST_TIMEOUT`].
pub async fn request_waiting(
    path: &Path,
    request: &Request,
) -> Result<serde_json::Value, ControlError> {
    let mut reader = open(path, request).await?;
    read_reply(path, &mut reader).await
}

/// Client: a watch; calls `line` with every event line (raw JSON) until `line` returns
/// false (`Ok`) or the node closes the socket (`NodeGone`: it stopped, so the watch
/// did not end by choice).
pub async fn watch(path: &Path, mut line: impl FnMut(&str) -> bool) -> Result<(), ControlError> {
    let mut reader = open(path, &Request::Watch).await?;
    read_reply(path, &mut reader).await?;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .await
            .map_err(|source| ControlError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Err(ControlError::NodeGone(path.to_path_buf()));
        }
        if !line(buf.trim_end()) {
            // Whoever reads the lines stopped (e.g. a closed pipe): nothing went wrong.
            return Ok(());
        }
    }
}

/// Server: reads one request line (bounded). `Err` carries the error reply to send.
pub async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Request, String> {
    let mut line = Vec::new();
    if !read_line(reader, &mut line).await? {
        return Err("empty request".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
}

/// Server: reads one line of at most [`MAX_REQUEST_LINE`] bytes into `line` (cleared
/// first); false at the end of the input. `Err` carries the error reply to send.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<bool, String> {
    line.clear();
    let mut limited = AsyncReadExt::take(reader, MAX_REQUEST_LINE as u64);
    let n = limited
        .read_until(b'\n', line)
        .await
        .map_err(|e| format!("cannot read request: {e}"))?;
    if n == 0 {
        return Ok(false);
    }
    if !line.ends_with(b"\n") && n >= MAX_REQUEST_LINE {
        return Err(format!("request longer than {MAX_REQUEST_LINE} bytes"));
    }
    Ok(true)
}

/// What a finished stream of messages did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamSent {
    /// Messages accepted.
    pub sent: u64,
    /// Sequence number of the first one.
    pub first_seq: Option<u64>,
    /// Sequence number of the last one.
    pub last_seq: Option<u64>,
}

/// Client: sends every message `messages` yields to `peer` over one connection (a
/// `send_stream`), writing while the node answers, so the node takes them as fast as
/// it commits them; returns the peer's name as the node knows it and what was sent.
/// Blocking: the messages are read and written on a thread of their own.
pub fn send_stream<I>(
    path: &Path,
    peer: &str,
    messages: I,
) -> Result<(String, StreamSent), ControlError>
where
    I: Iterator<Item = io::Result<Vec<u8>>> + Send + 'static,
{
    use std::io::{BufRead as _, Write as _};
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut writer = io::BufWriter::with_capacity(64 * 1024, stream.try_clone().map_err(io_err)?);
    let request = serde_json::json!({ "cmd": "send_stream", "peer": peer });
    writeln!(writer, "{request}")
        .and_then(|()| writer.flush())
        .map_err(io_err)?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let mut next_reply =
        |reader: &mut io::BufReader<_>| -> Result<serde_json::Value, ControlError> {
            line.clear();
            if reader.read_line(&mut line).map_err(io_err)? == 0 {
                return Err(ControlError::NoAnswer(path.to_path_buf()));
            }
            parse_reply(path, &line)
        };
    let opened = next_reply(&mut reader)?;
    let name = opened
        .get("peer")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(peer)
        .to_string();
    // Writes every message, then shuts the writing side: the node's cue to finish.
    // A write fails only when the node closed after an error, which the reader reports.
    let feeder = std::thread::spawn(move || -> Result<u64, io::Error> {
        let mut written = 0;
        let mut outcome = Ok(());
        for message in messages {
            let bytes = match message {
                Ok(bytes) => bytes,
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            };
            let Ok(json) = serde_json::to_string(&StreamMessage::of(bytes)) else {
                continue;
            };
            if writeln!(writer, "{json}").is_err() {
                break;
            }
            written += 1;
        }
        let _ = writer.flush();
        let _ = writer.get_ref().shutdown(std::net::Shutdown::Write);
        outcome.map(|()| written)
    });
    let mut sent = StreamSent::default();
    let answers = loop {
        match next_reply(&mut reader) {
            Ok(reply) => {
                if let Some(seq) = reply.get("seq").and_then(serde_json::Value::as_u64) {
                    sent.sent += 1;
                    sent.first_seq.get_or_insert(seq);
                    sent.last_seq = Some(seq);
                } else if reply.get("done").is_some() {
                    break Ok(());
                }
            }
            Err(ControlError::Refused(error)) => {
                break Err(ControlError::StreamRefused {
                    accepted: sent.sent,
                    error,
                })
            }
            Err(error) => break Err(error),
        }
    };
    // The feeder ends once its input does or its writes fail (the node closed).
    let fed = feeder.join().unwrap_or(Ok(0));
    answers?;
    match fed {
        Err(source) => Err(ControlError::Input {
            accepted: sent.sent,
            source,
        }),
        Ok(written) if written != sent.sent => Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            reason: format!("{} of {written} messages answered", sent.sent),
        }),
        Ok(_) => Ok((name, sent)),
    }
}

/// Server: an error reply line.
pub fn error_line(error: &str) -> String {
    let mut line = serde_json::json!({ "ok": false, "error": error }).to_string();
    line.push('\n');
    line
}

/// Server: a success reply line with `fields` merged into `{"ok":true}`.
pub fn ok_line(fields: serde_json::Value) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ok".into(), serde_json::Value::Bool(true));
    if let serde_json::Value::Object(map) = fields {
        object.extend(map);
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the path.
    #[error("control socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("cannot create control socket {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS's error.
        source: io::Error,
    },
}

/// Server: binds the socket at `path`, replacing a stale socket file left by a process
/// that died, refusing one a live process answers on. The socket is made 0600: only
/// its owner may drive the node.
pub async fn bind(path: &Path) -> Result<tokio::net::UnixListener, BindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let io_err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Parses `IP` or `IP:PORT` (port 0 when absent: the OS picks one).
pub fn parse_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 0))
        .map_err(|_| format!("{text:?} is not an IP address or ip:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let r = Request::Send {
            peer: "b".into(),
            text: Some("hi".into()),
            data: None,
            wait: false,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"cmd":"send","peer":"b","text":"hi"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn older_send_requests_still_parse_and_payloads_are_binary_safe() {
        // A client written before `data` and `wait` existed.
        let old: Request =
            serde_json::from_str(r#"{"cmd":"send","peer":"b","text":"hi"}"#).unwrap();
        assert_eq!(
            old,
            Request::Send {
                peer: "b".into(),
                text: Some("hi".into()),
                data: None,
                wait: false,
            }
        );
        let bytes = vec![0xff, 0x00, b'\n', 0xfe];
        let message = StreamMessage::of(bytes.clone());
        assert_eq!(message.text, None);
        assert_eq!(payload_of(message.text, message.data.as_deref()), Ok(bytes));
        let text = StreamMessage::of(b"plain".to_vec());
        assert_eq!(text.text.as_deref(), Some("plain"));
        assert!(payload_of(None, Some("not base64!")).is_err());
        assert!(payload_of(Some("a".into()), Some("YQ==")).is_err());
        assert!(payload_of(None, None).is_err());
    }

    #[test]
    fn bind_addresses_take_an_optional_port() {
        assert_eq!(parse_bind("127.0.0.2").unwrap().to_string(), "127.0.0.2:0");
        assert_eq!(parse_bind("127.0.0.2:99").unwrap().port(), 99);
        assert!(parse_bind("nope").is_err());
    }
}
