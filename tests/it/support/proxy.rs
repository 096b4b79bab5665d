//! The scaffold the loopback proxies in front of the emulator share: an HTTP proxy that hands
//! each request to its own handler with a forwarder to the emulator, and a TCP proxy that hands
//! each connection to its own. What a proxy does to a request lives in its own file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::loopback;

/// Requests larger than this are not expected from any SDK call the tests make.
const MAX_BODY: usize = 16 << 20;

/// The emulator behind an HTTP proxy.
#[derive(Debug, Clone)]
pub struct Upstream {
    base: String,
    pub http: reqwest::Client,
}

impl Upstream {
    pub fn new(endpoint: &str) -> Upstream {
        Upstream {
            base: endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `path` (with its query) on the emulator.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The request as the client sent it, all headers but `host`; `None` when the emulator
    /// cannot be reached.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Option<reqwest::Response> {
        let mut request = self.http.request(method, self.url(path)).body(body);
        for (name, value) in headers {
            if name != "host" {
                request = request.header(name, value);
            }
        }
        request.send().await.ok()
    }

    /// The emulator's answer to the request, passed back unchanged (status, content type, an
    /// error's type, body).
    pub async fn pass_through(&self, parts: &Parts, body: Bytes) -> Response {
        let Some(answer) = self
            .send(parts.method.clone(), &path_and_query(parts), &parts.headers, body)
            .await
        else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let status = answer.status();
        let kept: Vec<_> = ["content-type", "x-amzn-errortype"]
            .into_iter()
            .filter_map(|name| Some((name, answer.headers().get(name)?.clone())))
            .collect();
        let bytes = answer.bytes().await.unwrap_or_default();
        let mut response = (status, bytes).into_response();
        for (name, value) in kept {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The request line's target: path and query.
pub fn path_and_query(parts: &Parts) -> String {
    parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// What an HTTP proxy does with one request: its head and whole body, and the emulator.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, upstream: &Upstream, parts: Parts, body: Bytes) -> impl Future<Output = Response> + Send;
}

/// Serves `handler` on a free loopback port in front of `endpoint`; its address.
pub async fn http<H: Handler>(endpoint: &str, handler: H) -> SocketAddr {
    async fn each<H: Handler>(State((upstream, handler)): State<(Upstream, H)>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY).await.unwrap_or_default();
        handler.handle(&upstream, parts, body).await
    }
    let app = axum::Router::new()
        .fallback(each::<H>)
        .with_state((Upstream::new(endpoint), handler));
    loopback::serve(app).await
}

/// A running HTTP proxy that cuts answers into pages: its address, and a count of the pages it
/// served that were not the last, which its handler keeps.
#[derive(Debug, Clone)]
pub struct PagingProxy {
    pub addr: SocketAddr,
    partial: Arc<AtomicU64>,
}

impl PagingProxy {
    /// Serves the handler `pager` builds around the count, in front of `endpoint`.
    pub async fn start<H: Handler>(endpoint: &str, pager: impl FnOnce(Arc<AtomicU64>) -> H) -> PagingProxy {
        let partial = Arc::new(AtomicU64::new(0));
        let addr = http(endpoint, pager(partial.clone())).await;
        PagingProxy { addr, partial }
    }

    pub fn endpoint(&self) -> String {
        loopback::url(self.addr)
    }

    /// Pages served that were not the last of their collection.
    pub fn partial_pages(&self) -> u64 {
        self.partial.load(Ordering::SeqCst)
    }
}

/// Accepts connections on a free loopback port and gives each to `accept`, in the order they
/// arrive (so what it decides per connection follows that order); the future it returns
/// serves the connection on a task of its own.
pub async fn tcp<F, Fut>(mut accept: F) -> SocketAddr
where
    F: FnMut(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (listener, addr) = loopback::listen().await;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(accept(client));
        }
    });
    addr
}

/// The `host:port` of an `http://` endpoint.
pub fn socket_addr(endpoint: &str) -> SocketAddr {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("upstream host:port")
}

/// Reads one HTTP/1.1 request off a connection: the head, then `Content-Length` bytes of body.
pub async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(buf);
            }
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where a request's head ends (the blank line), if it has arrived.
pub fn head_end(request: &[u8]) -> Option<usize> {
    request.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Sends `request` to the emulator and waits for its whole answer, which nobody hears: the
/// emulator closes each connection after its response, so the end of it means applied.
pub async fn deliver_unheard(upstream: SocketAddr, request: &[u8]) {
    if let Ok(mut server) = TcpStream::connect(upstream).await
        && server.write_all(request).await.is_ok()
    {
        let mut sink = Vec::new();
        let _ = server.read_to_end(&mut sink).await;
    }
}
