//! An identity provider's JWKS endpoint on loopback, serving keys of the JWT fixtures.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Response;
use serde_json::{Value, json};

use super::loopback;

const JWKS: &str = include_str!("../../fixtures/jwt/jwks.json");

/// What the JWKS endpoint serves now, and how often it was asked.
#[derive(Debug)]
pub struct JwksEndpoint {
    pub body: String,
    pub status: u16,
    pub cache_control: Option<String>,
    pub fetches: usize,
}

/// A real HTTP server whose key set, status and `Cache-Control` a test changes (rotation,
/// withdrawal, outage), counting every fetch.
#[derive(Debug, Clone)]
pub struct JwksServer {
    pub url: String,
    state: Arc<Mutex<JwksEndpoint>>,
}

impl JwksServer {
    /// Serves the fixture keys `kids`.
    pub async fn start(kids: &[&str]) -> JwksServer {
        let state = Arc::new(Mutex::new(JwksEndpoint {
            body: key_set(kids),
            status: 200,
            cache_control: None,
            fetches: 0,
        }));
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve))
            .with_state(state.clone());
        let addr = loopback::serve(app).await;
        JwksServer {
            url: format!("{}/.well-known/jwks.json", loopback::url(addr)),
            state,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut JwksEndpoint) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves the fixture keys `kids`, healthy.
    pub fn publish(&self, kids: &[&str]) {
        self.with(|s| {
            s.body = key_set(kids);
            s.status = 200;
        });
    }

    pub fn fetches(&self) -> usize {
        self.with(|s| s.fetches)
    }
}

async fn serve(State(state): State<Arc<Mutex<JwksEndpoint>>>) -> Response {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.fetches += 1;
    let mut response = Response::builder()
        .status(s.status)
        .header(CONTENT_TYPE, "application/json");
    if let Some(cc) = &s.cache_control {
        response = response.header(CACHE_CONTROL, cc.as_str());
    }
    response.body(axum::body::Body::from(s.body.clone())).expect("response")
}

/// The fixture JWKS reduced to the keys `kids`.
fn key_set(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.iter().any(|kid| k["kid"] == *kid))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}
