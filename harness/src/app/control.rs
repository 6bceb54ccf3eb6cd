//! The control socket: a Unix socket on which a running node (or relay) answers JSON
//! lines. One request per connection, one JSON object per line.
//!
//! Requests (`{"cmd": …}`):
//! - `{"cmd":"status"}` → `{"ok":true,"status":{…}}` (a node's
//!   [`NodeStatusReport`](super::metrics::NodeStatusReport)) or `{"ok":true,"relay":{…}}`
//! - `{"cmd":"send","peer":"NAME","text":"…"}` → `{"ok":true,"peer":"NAME","seq":N}`
//! - `{"cmd":"migrate","bind":"127.0.0.2"}` → `{"ok":true,"old":"…","new":"…"}`
//! - `{"cmd":"watch"}` → `{"ok":true,"watching":true}`, then one [`WatchEvent`] per
//!   line until the client goes away: first the current status of every peer, then
//!   every event as it happens.
//!
//! Errors are `{"ok":false,"error":"…"}`.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest request line a server reads (a `send` with the largest message, as JSON).
pub const MAX_REQUEST_LINE: usize = 256 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The full status report.
    Status,
    /// Send a text message to a peer.
    Send {
        /// Peer name, full public key hex, or a unique prefix of it.
        peer: String,
        /// The message.
        text: String,
    },
    /// Stream events and delivered messages.
    Watch,
    /// Manual network change: rebind the endpoint.
    Migrate {
        /// `IP` (any port) or `IP:PORT`.
        bind: String,
    },
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
        /// The payload as text (invalid UTF-8 replaced).
        text: String,
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
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer {
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
pub async fn read_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut limited = AsyncReadExt::take(reader, MAX_REQUEST_LINE as u64);
    let n = limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read request: {e}"))?;
    if n == 0 {
        return Err("empty request".into());
    }
    if !line.ends_with(b"\n") && n >= MAX_REQUEST_LINE {
        return Err(format!("request longer than {MAX_REQUEST_LINE} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
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
            text: "hi".into(),
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
    fn bind_addresses_take_an_optional_port() {
        assert_eq!(parse_bind("127.0.0.2").unwrap().to_string(), "127.0.0.2:0");
        assert_eq!(parse_bind("127.0.0.2:99").unwrap().port(), 99);
        assert!(parse_bind("nope").is_err());
    }
}
