//! A loopback TCP proxy in front of the emulator that loses requests or responses, delivers a
//! request late, answers `TooManyRequests` or DynamoDB's throughput refusal in the emulator's
//! place, or black-holes everything
//! during an outage, on demand: on the next connections, or on the requests of one API call
//! (`inject_on`, matched by method and path). Hand-written because moto cannot fail this way: it
//! answers every request it receives, at once, and never throttles. The emulator closes each
//! connection after its response, so one connection carries one request, and a fault per
//! connection is a fault per request. Built on the TCP proxy of `proxy`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{loopback, proxy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault on this connection: lets a queued fault reach a later request.
    Pass,
    /// Read the request, never forward it, close the connection.
    LoseRequest,
    /// Forward the request and let the emulator apply it, then close without the response.
    LoseResponse,
    /// Accept the connection and never answer (held for a minute).
    Stall,
    /// Read the request, close the connection (the client sees a reset and resends), and
    /// forward the request to the emulator only after this delay: the original lands after its
    /// resend, as a request stuck in a network can.
    Delay(Duration),
    /// Answer `429 TooManyRequestsException` as API Gateway's control plane does, without
    /// forwarding: the request is refused unexecuted.
    TooManyRequests,
    /// Answer `403 AccessDeniedException` without forwarding, as API Gateway does to a caller
    /// whose IAM policy does not cover the resource: refused unexecuted, never retried.
    AccessDenied,
    /// Answer `400 BadRequestException` without forwarding, as API Gateway does to a listing's
    /// `position` it no longer takes: refused unexecuted, never retried.
    BadRequest,
    /// Answer `404 NotFoundException` without forwarding, as API Gateway does to a call naming a
    /// usage plan it no longer has (the emulator lists a deleted plan's keys still).
    NotFound,
    /// Answer DynamoDB's `400 ProvisionedThroughputExceededException` without forwarding: the
    /// item's partition refused the write unexecuted, as DynamoDB does past an item's capacity.
    ThroughputExceeded,
    /// Forward the request and let the emulator apply it, then answer DynamoDB's `500
    /// InternalServerError` in place of its response: a store failing while it applies a write.
    InternalError,
    /// Read the request and hold it until `release`, then forward it and deliver the answer: the
    /// caller is paused at that call while others run (after `release`, a hold passes at once).
    Hold,
}

/// Faults for the requests of one call: its method, and `path` found in its request line or
/// headers (a path for API Gateway, `x-amz-target`'s operation for DynamoDB). Each matching
/// request takes the next entry (`None`: passes through); past the list they all pass. Every
/// match is counted.
#[derive(Debug, Clone)]
struct Rule {
    method: String,
    path: String,
    faults: VecDeque<Option<Fault>>,
    seen: u64,
}

impl Rule {
    fn matches(&self, method: &str, head: &str) -> bool {
        self.method == method && head.contains(&self.path)
    }
}

/// A share of connections that get a fault drawn from a list, after the queued faults.
#[derive(Debug, Clone)]
struct Random {
    per_million: u32,
    faults: Vec<Fault>,
}

/// Faults are consumed one per connection, in order; connections beyond them pass through, or
/// get a random fault when `inject_randomly` set a share.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    random: Arc<Mutex<Option<Random>>>,
    connections: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    /// Delayed requests not yet answered by the emulator.
    held: Arc<AtomicU64>,
    /// An outage: every new connection stalls (or, `refusing`, is cut after its request) and
    /// open ones are cut.
    outage: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    /// Requests held (`Fault::Hold`) so far, how many of them were let go, and whether every
    /// hold may go on.
    holding: Arc<AtomicU64>,
    let_go: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = proxy::socket_addr(upstream);
        let mut proxy = FaultProxy {
            // Known once bound; the accept loop's copy never reads it.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            faults: Arc::default(),
            rules: Arc::default(),
            random: Arc::default(),
            connections: Arc::default(),
            injected: Arc::default(),
            held: Arc::default(),
            outage: Arc::default(),
            refusing: Arc::default(),
            holding: Arc::default(),
            let_go: Arc::default(),
            released: Arc::default(),
        };
        let this = proxy.clone();
        proxy.addr = proxy::tcp(move |client| this.accept(client, upstream)).await;
        proxy
    }

    /// Decides the fault of a new connection, in the order connections arrive, and returns
    /// what serves it.
    fn accept(&self, client: TcpStream, upstream: SocketAddr) -> impl Future<Output = ()> + Send + use<> {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let fault = self.next_fault().filter(|f| *f != Fault::Pass);
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        let by_rule = fault.is_none() && !self.rules.lock().expect("rules").is_empty();
        let this = self.clone();
        async move {
            if by_rule {
                let hold = this.hold();
                serve_matching(client, upstream, this.rules, this.injected, hold).await;
            } else {
                serve(client, upstream, fault, this.held, this.outage).await;
            }
        }
    }

    /// The outage's stall, else the next queued fault, else perhaps a random one.
    fn next_fault(&self) -> Option<Fault> {
        if self.outage.load(Ordering::SeqCst) {
            return Some(match self.refusing.load(Ordering::SeqCst) {
                true => Fault::LoseRequest,
                false => Fault::Stall,
            });
        }
        self.faults.lock().expect("faults").pop_front().or_else(|| {
            let random = self.random.lock().expect("random");
            let r = random.as_ref()?;
            (rand::random::<u32>() % 1_000_000 < r.per_million)
                .then(|| r.faults[rand::random::<u32>() as usize % r.faults.len()])
        })
    }

    /// From now on, a fault drawn from `faults` on each connection with probability `share`.
    pub fn inject_randomly(&self, share: f64, faults: &[Fault]) {
        *self.random.lock().expect("random") = Some(Random {
            per_million: (share * 1e6) as u32,
            faults: faults.to_vec(),
        });
    }

    fn hold(&self) -> Hold {
        Hold {
            holding: self.holding.clone(),
            let_go: self.let_go.clone(),
            released: self.released.clone(),
        }
    }

    /// Waits until a request is held (`Fault::Hold`).
    pub async fn wait_held(&self) {
        while self.holding.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` requests were held, in all.
    pub async fn wait_holds(&self, n: u64) {
        while self.holding.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets the requests held so far go on; later ones are held again.
    pub fn release_held(&self) {
        self.let_go.store(self.holding.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Lets held requests, and every later hold, go on.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Waits until every delayed request has reached the emulator and been answered.
    pub async fn drain(&self) {
        while self.held.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        loopback::url(self.addr)
    }

    /// Faults for the requests `method` whose request line or headers contain `path` (an API
    /// Gateway path, or a DynamoDB operation such as `DynamoDB_20120810.TransactWriteItems`), in
    /// order (`None` passes one through); an empty list only counts them (`seen`).
    pub fn inject_on(&self, method: &str, path: &str, faults: &[Option<Fault>]) {
        self.rules.lock().expect("rules").push(Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            faults: faults.iter().copied().collect(),
            seen: 0,
        });
    }

    /// Requests matched by the rules for `method` and `path` so far, faulted or not.
    pub fn seen(&self, method: &str, path: &str) -> u64 {
        self.rules
            .lock()
            .expect("rules")
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .map(|r| r.seen)
            .sum()
    }

    pub fn inject(&self, fault: Fault) {
        self.faults.lock().expect("faults").push_back(fault);
    }

    /// Drops the faults not yet consumed, queued or random.
    pub fn heal(&self) {
        self.faults.lock().expect("faults").clear();
        *self.random.lock().expect("random") = None;
    }

    /// Black-holes the store until `end_outage`: new connections stall, open ones are cut.
    pub fn begin_outage(&self) {
        self.outage.store(true, Ordering::SeqCst);
    }

    /// An outage that fails each call at once instead of letting it time out: open connections
    /// are cut, new ones cut after their request, until `end_outage`. Its start and end are
    /// sharp whatever the client's timeouts.
    pub fn begin_refusing_outage(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.outage.store(true, Ordering::SeqCst);
    }

    pub fn end_outage(&self) {
        self.outage.store(false, Ordering::SeqCst);
        self.refusing.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// What `Fault::Hold` waits on.
struct Hold {
    holding: Arc<AtomicU64>,
    let_go: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
}

impl Hold {
    /// Holds one request until it is let go.
    async fn wait(&self) {
        let ticket = self.holding.fetch_add(1, Ordering::SeqCst);
        while !self.released.load(Ordering::SeqCst) && self.let_go.load(Ordering::SeqCst) <= ticket {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads the request first, and answers it by the first rule it matches.
async fn serve_matching(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    injected: Arc<AtomicU64>,
    hold: Hold,
) {
    let Some(request) = proxy::read_request(&mut client).await else {
        return;
    };
    let end = proxy::head_end(&request).unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..end]).into_owned();
    let method = head.split(' ').next().unwrap_or_default();
    let fault = {
        let mut rules = rules.lock().expect("rules");
        rules.iter_mut().find(|r| r.matches(method, &head)).and_then(|r| {
            r.seen += 1;
            r.faults.pop_front().flatten()
        })
    }
    .filter(|f| *f != Fault::Pass);
    if fault.is_some() {
        injected.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::TooManyRequests) => throttle(&mut client).await,
        Some(Fault::AccessDenied) => access_denied(&mut client).await,
        Some(Fault::BadRequest) => bad_request(&mut client).await,
        Some(Fault::NotFound) => not_found(&mut client).await,
        Some(Fault::ThroughputExceeded) => throughput_exceeded(&mut client).await,
        Some(Fault::InternalError) => {
            proxy::deliver_unheard(upstream, &request).await;
            internal_error(&mut client).await;
        }
        Some(Fault::LoseRequest) => {}
        Some(Fault::Stall) => tokio::time::sleep(Duration::from_secs(60)).await,
        // Applied by the emulator, the answer never delivered.
        Some(Fault::LoseResponse | Fault::Delay(_)) => proxy::deliver_unheard(upstream, &request).await,
        Some(Fault::Pass | Fault::Hold) | None => {
            if fault == Some(Fault::Hold) {
                hold.wait().await;
            }
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            if server.write_all(&request).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
    }
    let _ = client.shutdown().await;
}

/// API Gateway's answer to a throttled control-plane call.
async fn throttle(client: &mut TcpStream) {
    let body = r#"{"message":"Too Many Requests"}"#;
    error_answer(
        client,
        "429 Too Many Requests",
        "TooManyRequestsException",
        "application/json",
        body,
    )
    .await;
}

/// API Gateway's answer to a call IAM does not allow, not applied.
async fn access_denied(client: &mut TcpStream) {
    let body = r#"{"message":"User is not authorized to perform: apigateway:PATCH"}"#;
    error_answer(
        client,
        "403 Forbidden",
        "AccessDeniedException",
        "application/json",
        body,
    )
    .await;
}

/// API Gateway's answer to a request it cannot take (here: a listing's stale `position`).
async fn bad_request(client: &mut TcpStream) {
    let body = r#"{"message":"Invalid position"}"#;
    error_answer(
        client,
        "400 Bad Request",
        "BadRequestException",
        "application/json",
        body,
    )
    .await;
}

/// The answer of a fault that refuses the request unexecuted.
async fn refuse(fault: Fault, client: &mut TcpStream) {
    match fault {
        Fault::TooManyRequests => throttle(client).await,
        Fault::AccessDenied => access_denied(client).await,
        Fault::BadRequest => bad_request(client).await,
        Fault::NotFound => not_found(client).await,
        _ => throughput_exceeded(client).await,
    }
}

/// API Gateway's answer to a call naming a usage plan it does not have.
async fn not_found(client: &mut TcpStream) {
    let body = r#"{"message":"Invalid Usage Plan ID specified"}"#;
    error_answer(client, "404 Not Found", "NotFoundException", "application/json", body).await;
}

/// DynamoDB's answer to a write past its item's (partition's) throughput, not applied.
async fn throughput_exceeded(client: &mut TcpStream) {
    let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#;
    let error = "ProvisionedThroughputExceededException";
    error_answer(client, "400 Bad Request", error, DYNAMODB_JSON, body).await;
}

/// DynamoDB's answer to a request that met an internal error, applied or not.
async fn internal_error(client: &mut TcpStream) {
    let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error"}"#;
    error_answer(
        client,
        "500 Internal Server Error",
        "InternalServerError",
        DYNAMODB_JSON,
        body,
    )
    .await;
}

const DYNAMODB_JSON: &str = "application/x-amz-json-1.0";

/// An AWS error answer: `status` (code and phrase), its `x-amzn-ErrorType`, and `body`; the
/// connection closes after it.
async fn error_answer(client: &mut TcpStream, status: &str, error: &str, content_type: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\nx-amzn-ErrorType: {error}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Option<Fault>,
    held: Arc<AtomicU64>,
    outage: Arc<AtomicBool>,
) {
    match fault {
        Some(Fault::Delay(delay)) => {
            let Some(request) = proxy::read_request(&mut client).await else {
                return;
            };
            held.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown().await;
            drop(client);
            tokio::time::sleep(delay).await;
            proxy::deliver_unheard(upstream, &request).await;
            held.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        Some(Fault::LoseRequest) => {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf).await;
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        Some(
            f @ (Fault::TooManyRequests
            | Fault::AccessDenied
            | Fault::BadRequest
            | Fault::NotFound
            | Fault::ThroughputExceeded),
        ) => {
            if proxy::read_request(&mut client).await.is_some() {
                refuse(f, &mut client).await;
            }
        }
        Some(Fault::InternalError) => {
            if let Some(request) = proxy::read_request(&mut client).await {
                proxy::deliver_unheard(upstream, &request).await;
                internal_error(&mut client).await;
            }
        }
        Some(Fault::LoseResponse) => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut from_client, _to_client) = client.split();
            let (mut from_server, mut to_server) = server.split();
            // The emulator closes the connection after its response: reading it to the end
            // means the request was applied.
            let forward = tokio::io::copy(&mut from_client, &mut to_server);
            let mut sink = Vec::new();
            let drain = from_server.read_to_end(&mut sink);
            tokio::select! {
                _ = drain => {}
                _ = forward => { let _ = from_server.read_to_end(&mut sink).await; }
            }
        }
        Some(Fault::Pass | Fault::Hold) | None => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let cut = async {
                while !outage.load(Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut => {}
            }
        }
    }
    let _ = client.shutdown().await;
}
