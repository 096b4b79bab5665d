//! A loopback TCP proxy in front of the emulator that loses requests or responses on demand.
//! Hand-written because moto cannot fail this way: it answers every request it receives.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, never forward it, close the connection.
    LoseRequest,
    /// Forward the request and let the emulator apply it, then close without the response.
    LoseResponse,
    /// Accept the connection and never answer (held for a minute).
    Stall,
}

/// Faults are consumed one per connection, in order; connections beyond them pass through.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    /// An outage: every new connection stalls and open ones are cut.
    outage: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = FaultProxy {
            addr: listener.local_addr().expect("proxy addr"),
            faults: Arc::default(),
            connections: Arc::default(),
            outage: Arc::default(),
        };
        let faults = proxy.faults.clone();
        let connections = proxy.connections.clone();
        let outage = proxy.outage.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let fault = if outage.load(std::sync::atomic::Ordering::SeqCst) {
                    Some(Fault::Stall)
                } else {
                    faults.lock().expect("faults").pop_front()
                };
                tokio::spawn(serve(client, upstream, fault, outage.clone()));
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn inject(&self, fault: Fault) {
        self.faults.lock().expect("faults").push_back(fault);
    }

    /// Drops the faults not yet consumed.
    pub fn heal(&self) {
        self.faults.lock().expect("faults").clear();
    }

    /// Black-holes the store until `end_outage`: new connections stall, open ones are cut.
    pub fn begin_outage(&self) {
        self.outage.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn end_outage(&self) {
        self.outage.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Option<Fault>,
    outage: Arc<std::sync::atomic::AtomicBool>,
) {
    match fault {
        Some(Fault::LoseRequest) => {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf).await;
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
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
        None => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let cut = async {
                while !outage.load(std::sync::atomic::Ordering::SeqCst) {
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
