//! A minimal HTTP/1.1 server on 127.0.0.1 for the stand-ins of Auth0 and RudderStack, plain or over TLS.
//!
//! It is hand-written rather than a mock framework because the fault tests need things a mock framework
//! cannot do: reset a connection mid-request, hang past a client timeout, send a truncated body, a body that
//! never ends, a gzip body that inflates to gigabytes, or a status line no real server would write. It
//! understands exactly what our client sends (Content-Length bodies, keep-alive) and nothing more.
//!
//! The hostile replies ([`Reply::Endless`], [`Reply::GzipBomb`]) are produced while the client reads, never
//! held in memory, and every one of them is bounded by [`Limits`] in time and in bytes, so a client that
//! neither reads nor hangs up cannot keep a test running. How each streamed reply ended is kept
//! ([`Server::stream_ends`]), so a test can assert that the fake stopped once the client went away.
//!
//! HTTPS serves a certificate the caller brings ([`Tls::new`]; the tests make a private CA per run) and the
//! daemon is pointed at the CA's PEM. The crypto provider is ring, named explicitly, so rustls never has to
//! pick one; rustls and ring are what the daemon's own client is built on, so serving HTTPS adds no crate.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
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
    /// Whether the client said it takes a gzip-encoded answer (`accept-encoding: gzip`, any of its list).
    pub fn accepts_gzip(&self) -> bool {
        self.header("accept-encoding").is_some_and(|v| {
            v.split(',').any(|c| {
                let mut parts = c.split(';');
                let coding = parts.next().unwrap_or_default().trim();
                // `gzip;q=0` (or `q=0.0`) is a refusal.
                let refused = parts.any(|p| {
                    p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0)
                });
                coding.eq_ignore_ascii_case("gzip") && !refused
            })
        })
    }
}

/// How long, and how many bytes, a streamed reply may last before the fake ends it on its own.
///
/// A streamed reply otherwise ends only when the client hangs up; these bounds make sure that a client which
/// keeps the connection open without reading, or reads forever, cannot keep a test (or a runaway loop in the
/// fake) going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time from the first byte of the head to the end of the reply.
    pub max_time: Duration,
    /// Bytes written to the connection, head and framing included (before TLS).
    pub max_wire_bytes: u64,
}

impl Default for Limits {
    /// 60 s and 4 GiB: far more than any client under test should accept, far less than forever.
    fn default() -> Self {
        Limits { max_time: Duration::from_secs(60), max_wire_bytes: 4 << 30 }
    }
}

/// A body that can replace any reply's body while keeping its status and headers ([`Reply::with_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hostile {
    /// `prefix`, then `chunk` repeated until the client hangs up (see [`Reply::Endless`]).
    Endless {
        /// Sent once first, e.g. `[` to look like the start of a JSON array.
        prefix: Vec<u8>,
        /// Repeated, e.g. `{"log_id":"1"},`.
        chunk: Vec<u8>,
    },
    /// A gzip stream that inflates to `prefix` and `inflated` bytes of `fill` (see [`Reply::GzipBomb`]).
    GzipBomb {
        /// Inflated first.
        prefix: Vec<u8>,
        /// The byte repeated, e.g. `[` (nesting), `b' '` (JSON whitespace) or 0.
        fill: u8,
        /// How many `fill` bytes the body inflates to.
        inflated: u64,
    },
}

/// What the fake does with a request.
///
/// The fields are HTTP's own parts (`status`, `headers`, `body`) or are described by their variant, and
/// repeating that on each would say nothing more.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer normally, optionally after a delay.
    Respond { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, delay: Option<Duration> },
    /// Close the connection without answering (the client sees a reset or an incomplete message).
    Reset,
    /// Send the status line, headers and a Content-Length, then only part of the body, then close.
    Truncate { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, keep: usize },
    /// `Transfer-Encoding: chunked`: the body in exactly these chunks (empty ones are skipped, as an empty
    /// chunk would end the body), with `delay` before every chunk but the first, within the default
    /// [`Limits`]. The connection stays open.
    Chunked { status: u16, headers: Vec<(String, String)>, chunks: Vec<Vec<u8>>, delay: Option<Duration> },
    /// A chunked body that never ends: `prefix`, then `chunk` over and over until the client hangs up or a
    /// limit is reached; then the connection is closed without the last chunk, so even a client that read
    /// everything sees an incomplete body.
    Endless { status: u16, headers: Vec<(String, String)>, prefix: Vec<u8>, chunk: Vec<u8>, limits: Limits },
    /// `Content-Encoding: gzip`, chunked: a gzip stream of `prefix` followed by `inflated` bytes of `fill`.
    /// About a thousandth of the inflated size crosses the wire, produced while the client reads from one
    /// compressed megabyte, so the fake never holds the body. Complete and valid (CRC and length) when the
    /// client reads it all; cut off (no last chunk) when a limit is reached first.
    GzipBomb {
        status: u16,
        headers: Vec<(String, String)>,
        prefix: Vec<u8>,
        fill: u8,
        inflated: u64,
        limits: Limits,
    },
    /// These bytes as the whole response, status line and headers included, then close the connection: for
    /// answers no real server writes, such as `content-length: 99999999999999999999`.
    Raw { bytes: Vec<u8> },
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
    /// An endless chunked body: `prefix`, then `chunk` repeated (see [`Reply::Endless`]), default limits.
    pub fn endless(status: u16, prefix: impl Into<Vec<u8>>, chunk: impl Into<Vec<u8>>) -> Reply {
        Reply::Endless {
            status,
            headers: Vec::new(),
            prefix: prefix.into(),
            chunk: chunk.into(),
            limits: Limits::default(),
        }
    }
    /// A gzip bomb inflating to `inflated` bytes of `fill` (see [`Reply::GzipBomb`]), default limits.
    pub fn gzip_bomb(status: u16, inflated: u64, fill: u8) -> Reply {
        Reply::GzipBomb {
            status,
            headers: Vec::new(),
            prefix: Vec::new(),
            fill,
            inflated,
            limits: Limits::default(),
        }
    }
    /// These bytes as the whole response (see [`Reply::Raw`]).
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Raw { bytes: bytes.into() }
    }

    /// The status, when the reply has one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Respond { status, .. }
            | Reply::Truncate { status, .. }
            | Reply::Chunked { status, .. }
            | Reply::Endless { status, .. }
            | Reply::GzipBomb { status, .. } => Some(*status),
            Reply::Reset | Reply::Raw { .. } => None,
        }
    }
    /// The headers, when the reply has its own.
    pub fn headers(&self) -> &[(String, String)] {
        match self {
            Reply::Respond { headers, .. }
            | Reply::Truncate { headers, .. }
            | Reply::Chunked { headers, .. }
            | Reply::Endless { headers, .. }
            | Reply::GzipBomb { headers, .. } => headers,
            Reply::Reset | Reply::Raw { .. } => &[],
        }
    }
    /// The first header with this (lower-case) name.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers().iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Add a header (a reset or raw reply has none).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Respond { headers, .. }
            | Reply::Truncate { headers, .. }
            | Reply::Chunked { headers, .. }
            | Reply::Endless { headers, .. }
            | Reply::GzipBomb { headers, .. } => headers.push((name.to_string(), value.to_string())),
            Reply::Reset | Reply::Raw { .. } => {}
        }
        self
    }
    /// Delay the answer (a plain response only).
    pub fn delayed(mut self, by: Duration) -> Reply {
        if let Reply::Respond { delay, .. } = &mut self {
            *delay = Some(by);
        }
        self
    }
    /// Compress a plain response's body with gzip and say so in `content-encoding`; other kinds unchanged.
    pub fn gzip(self) -> Reply {
        match self {
            Reply::Respond { status, headers, body, delay } => {
                Reply::Respond { status, headers, body: gzip_bytes(&body), delay }
                    .header("content-encoding", "gzip")
            }
            other => other,
        }
    }
    /// Send a plain response's body in chunks of `size` bytes (the last may be shorter), pausing `delay`
    /// between them instead of any delay before the answer; other kinds unchanged. Composes with
    /// [`Reply::gzip`] (compress first, then chunk).
    pub fn chunked(self, size: usize, delay: Option<Duration>) -> Reply {
        match self {
            Reply::Respond { status, headers, body, .. } => {
                let chunks = body.chunks(size.max(1)).map(<[u8]>::to_vec).collect();
                Reply::Chunked { status, headers, chunks, delay }
            }
            other => other,
        }
    }
    /// Keep this reply's status and headers but send `body` instead (a reset or raw reply is unchanged).
    pub fn with_body(self, body: &Hostile) -> Reply {
        let Some(status) = self.status() else { return self };
        let headers = self.headers().to_vec();
        match body.clone() {
            Hostile::Endless { prefix, chunk } => {
                Reply::Endless { status, headers, prefix, chunk, limits: Limits::default() }
            }
            Hostile::GzipBomb { prefix, fill, inflated } => {
                Reply::GzipBomb { status, headers, prefix, fill, inflated, limits: Limits::default() }
            }
        }
    }
    /// Bound a streamed reply ([`Reply::Endless`], [`Reply::GzipBomb`]) by these limits instead of the
    /// default ones; other kinds unchanged.
    pub fn limited(mut self, to: Limits) -> Reply {
        if let Reply::Endless { limits, .. } | Reply::GzipBomb { limits, .. } = &mut self {
            *limits = to;
        }
        self
    }
}

/// `data` as one gzip member, at the default level.
pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// A handler: called once per request, from the connection's task.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Which streamed reply a [`StreamEnd`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// [`Reply::Chunked`].
    Chunked,
    /// [`Reply::Endless`].
    Endless,
    /// [`Reply::GzipBomb`].
    GzipBomb,
}

/// Why a streamed reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// All of it was written (an endless body never finishes).
    Finished,
    /// A write failed: the client closed or reset the connection.
    ClientGone,
    /// [`Limits::max_time`] passed.
    TimeLimit,
    /// [`Limits::max_wire_bytes`] was reached.
    ByteLimit,
}

/// How one streamed reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// The kind of reply.
    pub kind: StreamKind,
    /// Why it ended.
    pub why: EndReason,
    /// Bytes handed to the connection, head and framing included (a client may have received fewer).
    pub wire_bytes: u64,
    /// Body bytes before framing and compression (for a bomb, what a client would inflate).
    pub body_bytes: u64,
    /// From the head to the end.
    pub lasted: Duration,
}

/// What the server keeps about its connections, shared with their tasks.
#[derive(Default)]
struct Stats {
    /// Streamed replies being written now.
    open_streams: AtomicUsize,
    /// Every streamed reply that ended, in order.
    stream_ends: Mutex<Vec<StreamEnd>>,
    /// TLS handshakes that failed (the client refused the certificate, or spoke plain HTTP).
    failed_handshakes: AtomicU64,
}

/// A server certificate (and the PEM of the CA that signed it) for serving HTTPS on 127.0.0.1.
///
/// Where the certificate comes from is the caller's business (the tests make a private CA per run); this
/// module only serves with it. Cheap to clone; one value can serve several stand-ins, so a client trusts one
/// CA file for all of them.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Arc<str>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Serve `chain` (the server certificate first) with `key`; `ca_pem` is the CA a client must trust.
    pub fn new(
        ca_pem: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Tls, rustls::Error> {
        // Name the provider instead of relying on a process-wide default: with only ring built there is no
        // ambiguity, and this keeps it so even if another provider is ever compiled in.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { ca_pem: ca_pem.into(), config: Arc::new(config) })
    }

    /// The CA certificate as PEM, for a client's trust store (`tls_ca_file`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Write the CA certificate as PEM to `path`.
    pub fn write_ca(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.ca_pem.as_bytes())
    }
}

/// A running server; dropping it stops accepting connections and ends every open one.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    tls: Option<Tls>,
    stats: Arc<Stats>,
}

impl Server {
    /// Start serving plain HTTP on an ephemeral port of 127.0.0.1, on the current tokio runtime; panics when
    /// no port can be had (for tests; see [`Server::try_start_with`]).
    pub async fn start(handler: Handler) -> Server {
        Self::start_with(handler, None).await
    }

    /// Start serving HTTPS with `tls`'s certificate on an ephemeral port of 127.0.0.1; panics when no port
    /// can be had.
    pub async fn start_tls(handler: Handler, tls: &Tls) -> Server {
        Self::start_with(handler, Some(tls.clone())).await
    }

    /// Start serving, over TLS when `tls` is given; panics when no port can be had.
    pub async fn start_with(handler: Handler, tls: Option<Tls>) -> Server {
        match Self::try_start_with(handler, tls).await {
            Ok(server) => server,
            Err(e) => panic!("cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Start serving, over TLS when `tls` is given, on an ephemeral port of 127.0.0.1.
    pub async fn try_start_with(handler: Handler, tls: Option<Tls>) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let token = stop.clone();
        let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.config.clone()));
        let task_stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        let token = token.clone();
                        let acceptor = acceptor.clone();
                        let stats = task_stats.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = serve(stream, acceptor, handler, stats) => {}
                            }
                        });
                    }
                }
            }
        });
        Ok(Server { addr, stop, tls, stats })
    }

    /// `http://127.0.0.1:PORT`, or `https://` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM of the CA that signed this server's certificate, when it serves TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(Tls::ca_pem)
    }

    /// Streamed replies ([`Reply::Chunked`], [`Reply::Endless`], [`Reply::GzipBomb`]) being written now.
    pub fn open_streams(&self) -> usize {
        self.stats.open_streams.load(Ordering::SeqCst)
    }

    /// How every streamed reply so far ended, in order.
    pub fn stream_ends(&self) -> Vec<StreamEnd> {
        self.stats.stream_ends.lock().unwrap().clone()
    }

    /// TLS handshakes that failed so far.
    pub fn failed_handshakes(&self) -> u64 {
        self.stats.failed_handshakes.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` streamed replies have ended, polling; panics after `within`.
    pub async fn wait_for_stream_ends(&self, n: usize, within: Duration) -> Vec<StreamEnd> {
        let deadline = Instant::now() + within;
        loop {
            let ends = self.stream_ends();
            if ends.len() >= n {
                return ends;
            }
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for {n} streamed replies to end; {} ended, {} open",
                ends.len(),
                self.open_streams()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connection, plain or TLS, so one request loop serves both.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Write all of `bytes` and flush: a TLS stream may otherwise keep the tail in its buffer.
async fn send(conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(bytes).await?;
    conn.flush().await
}

async fn serve(stream: TcpStream, acceptor: Option<TlsAcceptor>, handler: Handler, stats: Arc<Stats>) {
    // Like Go's net/http (which both real services run on or behind): without it, Nagle's algorithm holds a
    // small reply until the client's delayed ACK, about 40 ms per request.
    let _ = stream.set_nodelay(true);
    let conn = match acceptor {
        None => Conn::Plain(stream),
        // Bounded, so a client that connects and says nothing does not hold a task until the server stops.
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                _ => {
                    stats.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    };
    serve_connection(conn, handler, &stats).await;
}

async fn serve_connection(mut conn: Conn, handler: Handler, stats: &Stats) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let Some(request) = read_request(&mut conn, &mut buf).await else { return };
        let reply = handler(&request);
        match reply {
            Reply::Respond { status, headers, body, delay } => {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let mut reply = head(status, &headers, Some(body.len())).into_bytes();
                reply.extend_from_slice(&body);
                if send(&mut conn, &reply).await.is_err() {
                    return;
                }
            }
            Reply::Reset => {
                // Linger 0 turns the close into a RST, which is what a crashed peer looks like.
                let _ = conn.tcp().set_zero_linger();
                return;
            }
            Reply::Truncate { status, headers, body, keep } => {
                let head = head(status, &headers, Some(body.len()));
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body[..keep.min(body.len())]).await;
                let _ = conn.flush().await;
                return;
            }
            Reply::Raw { bytes } => {
                let _ = send(&mut conn, &bytes).await;
                let _ = conn.shutdown().await;
                return;
            }
            Reply::Chunked { status, headers, chunks, delay } => {
                let mut stream = Streamed::start(StreamKind::Chunked, Limits::default(), stats);
                let why = stream.run(&mut conn, write_chunks(status, &headers, &chunks, delay)).await;
                if why != EndReason::Finished {
                    return;
                }
            }
            Reply::Endless { status, headers, prefix, chunk, limits } => {
                let mut stream = Streamed::start(StreamKind::Endless, limits, stats);
                stream.run(&mut conn, write_endless(status, &headers, &prefix, &chunk)).await;
                // Never a last chunk: the connection closes, mid-body, whatever ended it.
                return;
            }
            Reply::GzipBomb { status, headers, prefix, fill, inflated, limits } => {
                let mut stream = Streamed::start(StreamKind::GzipBomb, limits, stats);
                let why = stream.run(&mut conn, write_bomb(status, &headers, &prefix, fill, inflated)).await;
                if why != EndReason::Finished {
                    return;
                }
            }
        }
    }
}

/// The bookkeeping of one streamed reply: counts what was written, enforces its [`Limits`], and records how it
/// ended when it is dropped (a stream cut by the server stopping only leaves the count of open ones).
struct Streamed<'a> {
    kind: StreamKind,
    limits: Limits,
    started: Instant,
    wire_bytes: u64,
    body_bytes: u64,
    why: Option<EndReason>,
    stats: &'a Stats,
}

/// One step of a streamed reply: bytes to write and how many body bytes they carry, or the end of the body.
enum Step {
    Write { wire: Vec<u8>, body: u64 },
    Done,
}

impl<'a> Streamed<'a> {
    fn start(kind: StreamKind, limits: Limits, stats: &'a Stats) -> Streamed<'a> {
        stats.open_streams.fetch_add(1, Ordering::SeqCst);
        Streamed { kind, limits, started: Instant::now(), wire_bytes: 0, body_bytes: 0, why: None, stats }
    }

    /// Write what `steps` produces until it is done, the client is gone, or a limit is reached.
    async fn run(&mut self, conn: &mut Conn, mut steps: impl StepSource) -> EndReason {
        // Capped at a day so an absurd `max_time` cannot overflow the clock.
        let deadline = tokio::time::Instant::now() + self.limits.max_time.min(Duration::from_secs(86_400));
        let why = loop {
            if self.wire_bytes >= self.limits.max_wire_bytes {
                break EndReason::ByteLimit;
            }
            // Under the deadline too: a chunked reply pauses between its chunks.
            let (wire, body) = match tokio::time::timeout_at(deadline, steps.next_step()).await {
                Err(_) => break EndReason::TimeLimit,
                Ok(Step::Done) => break EndReason::Finished,
                Ok(Step::Write { wire, body }) => (wire, body),
            };
            // The deadline covers a client that stops reading but keeps the connection open: the write then
            // blocks on a full socket buffer, and only the clock can end it.
            match tokio::time::timeout_at(deadline, send(conn, &wire)).await {
                Err(_) => break EndReason::TimeLimit,
                Ok(Err(_)) => break EndReason::ClientGone,
                Ok(Ok(())) => {}
            }
            self.wire_bytes += wire.len() as u64;
            self.body_bytes += body;
            if tokio::time::Instant::now() >= deadline {
                break EndReason::TimeLimit;
            }
        };
        self.why = Some(why);
        why
    }
}

impl Drop for Streamed<'_> {
    fn drop(&mut self) {
        self.stats.open_streams.fetch_sub(1, Ordering::SeqCst);
        // A stream dropped without a reason was cut by the server stopping; nobody is left to ask.
        if let Some(why) = self.why {
            self.stats.stream_ends.lock().unwrap().push(StreamEnd {
                kind: self.kind,
                why,
                wire_bytes: self.wire_bytes,
                body_bytes: self.body_bytes,
                lasted: self.started.elapsed(),
            });
        }
    }
}

/// Something that yields the pieces of a streamed reply one at a time, so nothing larger than a piece is
/// ever built.
trait StepSource {
    async fn next_step(&mut self) -> Step;
}

/// A chunk of a chunked body: hex length, CRLF, data, CRLF.
fn chunk_frame(data: &[u8]) -> Vec<u8> {
    let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// The head of a chunked reply.
fn chunked_head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    head(status, headers, None).into_bytes()
}

struct ChunkSteps<'a> {
    head: Option<Vec<u8>>,
    chunks: std::slice::Iter<'a, Vec<u8>>,
    delay: Option<Duration>,
    first: bool,
    ended: bool,
}

fn write_chunks<'a>(
    status: u16,
    headers: &[(String, String)],
    chunks: &'a [Vec<u8>],
    delay: Option<Duration>,
) -> ChunkSteps<'a> {
    ChunkSteps {
        head: Some(chunked_head(status, headers)),
        chunks: chunks.iter(),
        delay,
        first: true,
        ended: false,
    }
}

impl StepSource for ChunkSteps<'_> {
    async fn next_step(&mut self) -> Step {
        if let Some(head) = self.head.take() {
            return Step::Write { wire: head, body: 0 };
        }
        // An empty chunk on the wire would end the body early, so empty ones are skipped.
        match self.chunks.by_ref().find(|c| !c.is_empty()) {
            Some(chunk) => {
                if !self.first
                    && let Some(d) = self.delay
                {
                    tokio::time::sleep(d).await;
                }
                self.first = false;
                Step::Write { wire: chunk_frame(chunk), body: chunk.len() as u64 }
            }
            None if !self.ended => {
                self.ended = true;
                Step::Write { wire: b"0\r\n\r\n".to_vec(), body: 0 }
            }
            None => Step::Done,
        }
    }
}

struct EndlessSteps {
    /// The head and the prefix, still to send (last first), with the body bytes each carries.
    pending: Vec<(Vec<u8>, u64)>,
    /// `chunk` repeated to about 64 KiB and framed once, so each write is large and costs nothing to build.
    block: Vec<u8>,
    block_body: u64,
}

fn write_endless(status: u16, headers: &[(String, String)], prefix: &[u8], chunk: &[u8]) -> EndlessSteps {
    // An empty chunk would be the last chunk of the body: repeat a space instead.
    let chunk: &[u8] = if chunk.is_empty() { b" " } else { chunk };
    let data = chunk.repeat((64 * 1024usize).div_ceil(chunk.len()));
    let mut pending = Vec::new();
    if !prefix.is_empty() {
        pending.push((chunk_frame(prefix), prefix.len() as u64));
    }
    pending.push((chunked_head(status, headers), 0));
    EndlessSteps { pending, block_body: data.len() as u64, block: chunk_frame(&data) }
}

impl StepSource for EndlessSteps {
    async fn next_step(&mut self) -> Step {
        match self.pending.pop() {
            Some((wire, body)) => Step::Write { wire, body },
            None => Step::Write { wire: self.block.clone(), body: self.block_body },
        }
    }
}

/// Inflated bytes of `fill` per compressed unit of a bomb.
const BOMB_UNIT: u64 = 1 << 20;
/// Units per write: about 16 KiB on the wire, 16 MiB inflated.
const BOMB_UNITS_PER_WRITE: u64 = 16;

/// The pieces of a gzip bomb, made once per reply from one megabyte of `fill`.
///
/// Compressing gigabytes as they are sent would cost the fake seconds of CPU per bomb (the tests build flate2
/// without optimisation). Instead one megabyte of `fill` is compressed once by a fresh encoder and closed
/// with a sync flush: a deflate segment that ends on a byte boundary, is not final, and refers to nothing
/// before its own start, so any number of copies in a row is a valid deflate stream of that many megabytes.
/// The gzip trailer's CRC-32 is combined from the unit's CRC as copies are sent. What goes out is still
/// produced while the client reads; only one unit is ever computed.
struct BombSteps {
    head: Option<Vec<u8>>,
    /// The gzip header and the prefix, compressed and sync-flushed; sent with the first write.
    start: Option<Vec<u8>>,
    /// The deflate segment of one unit, and its CRC.
    segment: Vec<u8>,
    unit_crc: flate2::Crc,
    /// `BOMB_UNITS_PER_WRITE` copies of the unit's segment, framed as one chunk.
    group: Vec<u8>,
    group_crc: flate2::Crc,
    /// The CRC of everything inflated so far (prefix included).
    crc: flate2::Crc,
    fill: u8,
    /// `fill` bytes not yet sent.
    left: u64,
    /// Bytes the whole body inflates to, for the trailer.
    total: u64,
    ended: bool,
}

/// Raw deflate of `data` by a fresh encoder: sync-flushed (`last` false) or finished as the final block.
fn deflate_segment(data: &[u8], last: bool) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).expect("deflate into memory");
    if last {
        enc.finish().expect("deflate into memory")
    } else {
        enc.flush().expect("deflate into memory");
        std::mem::take(enc.get_mut())
    }
}

fn write_bomb(
    status: u16,
    headers: &[(String, String)],
    prefix: &[u8],
    fill: u8,
    inflated: u64,
) -> BombSteps {
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-encoding")) {
        headers.push(("content-encoding".into(), "gzip".into()));
    }
    // A gzip header: magic, deflate, no flags, no time, no extra flags, unknown OS.
    let mut start = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut crc = flate2::Crc::new();
    if !prefix.is_empty() {
        start.extend_from_slice(&deflate_segment(prefix, false));
        crc.update(prefix);
    }
    let unit = vec![fill; BOMB_UNIT as usize];
    let segment = deflate_segment(&unit, false);
    let mut unit_crc = flate2::Crc::new();
    unit_crc.update(&unit);
    let mut group_crc = flate2::Crc::new();
    for _ in 0..BOMB_UNITS_PER_WRITE {
        group_crc.combine(&unit_crc);
    }
    BombSteps {
        head: Some(chunked_head(status, &headers)),
        start: Some(start),
        group: chunk_frame(&segment.repeat(BOMB_UNITS_PER_WRITE as usize)),
        segment,
        unit_crc,
        group_crc,
        crc,
        fill,
        left: inflated,
        total: prefix.len() as u64 + inflated,
        ended: false,
    }
}

impl StepSource for BombSteps {
    async fn next_step(&mut self) -> Step {
        if let Some(head) = self.head.take() {
            return Step::Write { wire: head, body: 0 };
        }
        if let Some(start) = self.start.take() {
            let body = self.total - self.left;
            return Step::Write { wire: chunk_frame(&start), body };
        }
        let group = BOMB_UNIT * BOMB_UNITS_PER_WRITE;
        if self.left >= group {
            self.left -= group;
            self.crc.combine(&self.group_crc);
            return Step::Write { wire: self.group.clone(), body: group };
        }
        if self.ended {
            return Step::Done;
        }
        // The rest (under one group): whole units, then what is left of a unit as the final block, the
        // trailer, and the last chunk, in one write.
        self.ended = true;
        let units = self.left / BOMB_UNIT;
        let mut tail = self.segment.repeat(units as usize);
        for _ in 0..units {
            self.crc.combine(&self.unit_crc);
        }
        let rest = vec![self.fill; (self.left % BOMB_UNIT) as usize];
        tail.extend_from_slice(&deflate_segment(&rest, true));
        self.crc.update(&rest);
        tail.extend_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE is the inflated length modulo 2^32.
        tail.extend_from_slice(&(self.total as u32).to_le_bytes());
        let mut wire = chunk_frame(&tail);
        wire.extend_from_slice(b"0\r\n\r\n");
        let body = std::mem::take(&mut self.left);
        Step::Write { wire, body }
    }
}

/// The status line and headers; a `Content-Length` when the length is given, else `Transfer-Encoding:
/// chunked`.
fn head(status: u16, headers: &[(String, String)], len: Option<usize>) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    match len {
        Some(len) => head.push_str(&format!("content-length: {len}\r\n")),
        None => head.push_str("transfer-encoding: chunked\r\n"),
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn read_request(stream: &mut Conn, buf: &mut Vec<u8>) -> Option<Request> {
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
    // Read straight into the buffer's spare capacity: a zeroed scratch chunk per read would cost more than
    // the daemon's own work on a benchmark's megabyte bodies.
    buf.reserve((body_start + len).saturating_sub(buf.len()).min(64 << 20));
    while buf.len() < body_start + len {
        let n = stream.read_buf(buf).await.ok()?;
        if n == 0 {
            return None;
        }
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
