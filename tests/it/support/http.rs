//! A minimal HTTP/1.1 server on 127.0.0.1 for the fakes of Auth0 and RudderStack.
//!
//! It is hand-written rather than a mock framework because the fault tests need things a mock framework
//! cannot do: reset a connection mid-request, hang past a client timeout, or send a truncated body. It
//! understands exactly what our client sends (Content-Length bodies, keep-alive) and nothing more.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The first query parameter with this name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the fake does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer normally, optionally after a delay.
    Respond { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, delay: Option<Duration> },
    /// Close the connection without answering (the client sees a reset or an incomplete message).
    Reset,
    /// Send the status line, headers and a Content-Length, then only part of the body, then close.
    Truncate { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, keep: usize },
}

impl Reply {
    /// A response with a body and no extra headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Respond { status, headers: Vec::new(), body: body.into(), delay: None }
    }
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::new(status, serde_json::to_vec(value).unwrap()).header("content-type", "application/json")
    }
    /// A plain-text response, as Go's `http.Error` writes it.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, format!("{body}\n")).header("content-type", "text/plain; charset=utf-8")
    }
    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Respond { headers, .. } | Reply::Truncate { headers, .. } => {
                headers.push((name.to_string(), value.to_string()))
            }
            Reply::Reset => {}
        }
        self
    }
    /// Delay the answer.
    pub fn delayed(mut self, by: Duration) -> Reply {
        if let Reply::Respond { delay, .. } = &mut self {
            *delay = Some(by);
        }
        self
    }
}

/// A handler: called once per request, from the connection's task.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running server; dropping it stops accepting connections.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Server {
    /// Start serving on an ephemeral port of 127.0.0.1, on the current tokio runtime.
    pub async fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = serve_connection(stream, handler) => {}
                            }
                        });
                    }
                }
            }
        });
        Server { addr, stop }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_connection(mut stream: TcpStream, handler: Handler) {
    // Like Go's net/http (which both real services run on or behind): without it, Nagle's algorithm holds a
    // small reply until the client's delayed ACK, about 40 ms per request.
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else { return };
        let reply = handler(&request);
        match reply {
            Reply::Respond { status, headers, body, delay } => {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let mut reply = head(status, &headers, body.len()).into_bytes();
                reply.extend_from_slice(&body);
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
            Reply::Reset => {
                // Linger 0 turns the close into a RST, which is what a crashed peer looks like.
                let _ = stream.set_zero_linger();
                return;
            }
            Reply::Truncate { status, headers, body, keep } => {
                let head = head(status, &headers, body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body[..keep.min(body.len())]).await;
                let _ = stream.flush().await;
                return;
            }
        }
    }
}

fn head(status: u16, headers: &[(String, String)], len: usize) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\ncontent-length: {len}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let header_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let body_start = header_end + 4;
    while buf.len() < body_start + len {
        let mut chunk = vec![0u8; (body_start + len - buf.len()).min(1 << 20)];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    let url = url::Url::parse(&format!("http://fake{target}")).ok()?;
    Some(Request {
        method,
        path: url.path().to_string(),
        query: url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
