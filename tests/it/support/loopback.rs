//! Servers on a free port of 127.0.0.1: the listener every proxy, fake and served router of
//! these tests starts from.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A listener on a free loopback port, and its address.
pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("loopback addr");
    (listener, addr)
}

/// `http://` and the address, as an SDK endpoint or a base URL.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Serves `router` on a free loopback port for the rest of the test binary's life.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A router served on a free loopback port until this is dropped.
pub struct Running {
    pub base: String,
    _stop: oneshot::Sender<()>,
}

impl Running {
    pub async fn start(router: axum::Router) -> Running {
        let (listener, addr) = listen().await;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Running {
            base: url(addr),
            _stop: stop,
        }
    }
}
