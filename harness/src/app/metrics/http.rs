//! The HTTP listener (`hyper`) that serves a report as Prometheus text: the text
//! itself is the `tether` library's ([`tether::metrics`]).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;
use tether::metrics::PROMETHEUS_CONTENT_TYPE;
use tokio::net::TcpListener;

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsBindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS's error.
    pub source: std::io::Error,
}

/// Binds the metrics listener.
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, MetricsBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsBindError { addr, source })
}

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (and `/`) on `listener` with the text `render` produces (503
/// when it gives none: the process is stopping); any other path is a 404, any other
/// method a 405. One request per connection.
pub async fn serve_metrics<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = Option<String>> + 'static,
{
    let render = std::rc::Rc::new(render);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let render = render.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(&request, &*render).await) }
        });
        actix_rt::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one request.
async fn respond<F, Fut>(
    request: &Request<hyper::body::Incoming>,
    render: &F,
) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let (status, body, kind) = if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".to_string(),
            "text/plain",
        )
    } else if matches!(request.uri().path(), "/metrics" | "/") {
        match render().await {
            Some(body) => (StatusCode::OK, body, PROMETHEUS_CONTENT_TYPE),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping\n".into(),
                "text/plain",
            ),
        }
    } else {
        (
            StatusCode::NOT_FOUND,
            "try /metrics\n".to_string(),
            "text/plain",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
