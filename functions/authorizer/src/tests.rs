//! The authorizer's unit tests: header handling, route keys, and what a decision logs.

use super::*;

/// Log output captured from `tracing`.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_decision_logs_nothing_beyond_its_emf_line() {
    // GIVEN an authorizer on the memory store and directory, logging at info as `main` does
    let file = tollgate::policy_file::PolicyFile::parse(
        "[plans.free]\nrate = 1.0\nburst = 1\n[tenants.acme]\nplan = \"free\"\napi_key_sha256 = [\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"]\n",
    )
    .expect("policy");
    let config = Config::from_lookup(|k| match k {
        "TOLLGATE_STATE_TABLE" | "TOLLGATE_POLICY_TABLE" => Some("t".into()),
        _ => None,
    })
    .expect("config");
    let clock = Arc::new(tollgate::engine::clock::ManualClock::new(
        tollgate::engine::clock::Timestamp::from_secs(1_795_456_177),
    ));
    let authorizer = Authorizer::new(
        &config,
        Arc::new(tollgate::directory::MemoryDirectory::from_file(&file)),
        Arc::new(tollgate::store::MemoryStore::default()),
        clock,
        None,
    );
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // WHEN one request is admitted and the next refused
    let mut event: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/authorizer/rest-request.json")).expect("fixture");
    event["headers"]["x-api-key"] = json!("abc");
    event["multiValueHeaders"]["x-api-key"] = json!(["abc"]);
    for expected in ["Allow", "Deny"] {
        let answer = authorizer.handle(event.clone()).await.expect("decided");
        assert_eq!(answer["policyDocument"]["Statement"][0]["Effect"], expected);
    }
    // THEN no log line besides the EMF lines on stdout: one line per decision
    let logged = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert_eq!(logged, "", "decisions logged twice");
}

#[test]
fn a_credential_header_never_shows_its_value_in_debug_output() {
    let shown = format!("{:?}", HeaderValue::One("tg_live_secret_0123456789"));
    assert_eq!(shown, "One(<redacted>)");
}

#[test]
fn cache_control_max_age_is_read_and_no_store_means_zero() {
    assert_eq!(cache_max_age("public, max-age=3600"), Some(Duration::from_secs(3600)));
    assert_eq!(
        cache_max_age("Max-Age=\"60\", must-revalidate"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
    assert_eq!(cache_max_age("public"), None);
    assert_eq!(cache_max_age("max-age=soon"), None);
}

#[test]
fn route_keys_split_into_method_and_template() {
    assert_eq!(http_route("GET /pets/{id}", "GET").ok(), Some(("GET", "/pets/{id}")));
    assert_eq!(http_route("ANY /pets", "POST").ok(), Some(("POST", "/pets")));
    assert_eq!(http_route("$default", "PUT").ok(), Some(("PUT", "$default")));
    for bad in ["GET", "GET pets", " /pets", ""] {
        assert!(
            matches!(http_route(bad, "GET"), Err(AuthorizerError::InvalidEvent(_))),
            "{bad:?}"
        );
    }
}
