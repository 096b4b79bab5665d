//! What `tollgate serve` runs: the local gateway (`gateway`), its request routing (`routing`) and
//! the demo tenants it shares with `simulate` (`tenants`).

pub mod gateway;
pub mod routing;
pub mod tenants;

use std::net::SocketAddr;

/// The local gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source} (choose another with --listen)")]
    Listen { addr: SocketAddr, source: std::io::Error },
    /// The bound socket has no local address to print.
    #[error(transparent)]
    Address(std::io::Error),
    #[error("gateway stopped: {0}")]
    Stopped(std::io::Error),
}
