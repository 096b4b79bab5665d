//! `tollgate serve --store dynamodb`, the binary, under 64 keep-alive clients calling one tenant
//! without pause: one process, then two on the same table, at the shipped store defaults
//! (`--attempt-timeout-ms` 1000, 4 attempts, the plan failing open) but for the store budget,
//! which is one attempt's timeout instead of 150 ms. Every 2xx counts, whatever decided it (the
//! store or the fail-open fallback): nothing over `burst + rate × elapsed` from the first send to
//! the last answer (every decision falls between its request's send and its answer), and at least
//! 95 % of that from the first send to the last.
//!
//! Why the budget: the single-threaded emulator on two cores answers a few of 64 clients' writes
//! after 150 ms, and a few timeouts open the breaker, after which the fallback answers for its
//! cool-down; that is an outage, the `fail_open` and `write_back` suites' matter. These tests are
//! about a process's concurrent requests (its lanes), so they give the emulator the time it takes.
//!
//! They measure 10 s of real time on the machine's cores, so they run alone, in their own step
//! of `infra/test` (`--ignored serve::sixty_four`).

use std::time::{Duration, Instant};

use crate::support::emulator;
use crate::support::fault_proxy::FaultProxy;
use crate::support::serve_process::{Serving, serve};

/// One plan at 5/s with a burst of 10; its fail mode is the default, open.
const FIVE_PER_SECOND: &str = "[plans.five]\nrate = 5.0\nburst = 10\n";
const BURST: f64 = 10.0;
const RATE: f64 = 5.0;
/// The tenant the clients call, and the one each process's first call is for.
const KEY: &str = "tg_demo_five_0";
const WARM: &str = "tg_demo_five_1";
const UPDATE: &str = "DynamoDB_20120810.UpdateItem";

/// Runs of this suite take turns: each is 10 s of real time, and the figures of one must not
/// be those of two runs sharing the machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the clients saw, and what the processes wrote.
struct Run {
    admitted: u64,
    refused: u64,
    /// Answers other than 200 and 429.
    odd: u64,
    /// `burst + rate × (last send − first send)`: what the clients' sends could surely have.
    allowance: f64,
    /// `burst + rate × (last answer − first send)`: the most the store may admit, every decision
    /// being made between its request's send and its answer.
    most: f64,
    writes: u64,
}

/// `clients` keep-alive clients spread over `bases`, each with its connection open (a first call
/// for another tenant) before the clock starts, then calling again as soon as answered for
/// `secs`: admitted, refused, odd, the first and last send, and the writes `proxy` saw meanwhile.
async fn keep_calling(
    bases: &[String],
    clients: usize,
    secs: u64,
    proxy: &FaultProxy,
) -> ([u64; 3], (Duration, Duration), u64) {
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (base, ready) = (bases[i % bases.len()].clone(), ready.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let call = |key: &'static str| http.get(format!("{base}/hello")).header("x-api-key", key).send();
                let _ = call(WARM).await;
                ready.wait().await;
                let first_send = Instant::now();
                let end = first_send + Duration::from_secs(secs);
                let (mut counts, mut last_send, mut last_answer) = ([0u64; 3], first_send, first_send);
                while Instant::now() < end {
                    last_send = Instant::now();
                    counts[match call(KEY).await.map(|r| r.status().as_u16()) {
                        Ok(200..=299) => 0,
                        Ok(429) => 1,
                        _ => 2,
                    }] += 1;
                    last_answer = Instant::now();
                }
                (counts, first_send, (last_send, last_answer))
            })
        })
        .collect();
    let before = proxy.seen("POST", UPDATE);
    ready.wait().await;
    let (mut counts, mut sends) = ([0u64; 3], None::<(Instant, Instant, Instant)>);
    for r in futures::future::join_all(tasks).await {
        let (c, first, (last, answer)) = r.expect("client");
        (0..3).for_each(|i| counts[i] += c[i]);
        let widest = |(f, l, a): (Instant, Instant, Instant)| (f.min(first), l.max(last), a.max(answer));
        sends = Some(sends.map_or((first, last, answer), widest));
    }
    let (first, last, answer) = sends.expect("clients");
    (
        counts,
        (last - first, answer - first),
        proxy.seen("POST", UPDATE) - before,
    )
}

/// 64 clients for 10 s through `processes` serve processes on one fresh table, each started
/// with `extra` flags; their writes counted at a proxy in front of the emulator.
async fn run(processes: usize, extra: &[&str]) -> Run {
    let _turn = TURN.lock().await;
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    proxy.inject_on("POST", UPDATE, &[]);
    let policy = std::env::temp_dir().join(emulator::unique("five-per-second"));
    std::fs::write(&policy, FIVE_PER_SECOND).expect("policy file");
    let mut args: Vec<String> = ["--policy", &policy.display().to_string(), "--demo-tenants", "2"]
        .into_iter()
        .chain(["--store", "dynamodb", "--state-table", &table, "--region", "us-east-1"])
        .chain(["--endpoint-url", &proxy.endpoint()])
        // One attempt's timeout: see the module's comment.
        .chain(["--store-budget-ms", "1000"])
        .map(str::to_owned)
        .collect();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut servers: Vec<Serving> = Vec::new();
    for _ in 0..processes {
        servers.push(serve(args.clone()).await);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    // A process's first store call sets its SDK client up (credentials, endpoint), which on a
    // loaded machine takes longer than the budget: that is the fail-open tests' matter, so each
    // process makes it for another tenant before the clients start.
    for base in &bases {
        let warm = reqwest::Client::new()
            .get(format!("{base}/hello"))
            .header("x-api-key", WARM);
        assert_eq!(warm.send().await.expect("answers").status(), 200);
    }
    let ([admitted, refused, odd], elapsed, writes) = keep_calling(&bases, 64, 10, &proxy).await;
    let failed: Vec<_> = servers
        .iter()
        .map(|s| s.failed.lock().expect("tally").clone())
        .collect();
    drop(servers);
    let _ = std::fs::remove_file(policy);
    let allowance = BURST + RATE * elapsed.0.as_secs_f64();
    let most = BURST + RATE * elapsed.1.as_secs_f64();
    eprintln!(
        "{processes} process(es) {extra:?}, 64 clients: {admitted} admitted of {allowance:.2} (at most {most:.2}), {refused} refused, {odd} other, {writes} writes ({:.2} per admitted); answered by the fail mode: {failed:?}",
        writes as f64 / admitted.max(1) as f64
    );
    Run {
        admitted,
        refused,
        odd,
        allowance,
        most,
        writes,
    }
}

impl Run {
    fn holds_the_allowance(&self) {
        let Run {
            admitted,
            allowance,
            most,
            odd,
            refused,
            writes,
        } = *self;
        assert_eq!(odd, 0, "answers other than 2xx and 429");
        assert!(refused > 0, "the clients never passed the limit");
        assert!(admitted as f64 <= most, "over-admitted: {admitted} > {most:.2}");
        assert!(
            admitted as f64 >= 0.95 * allowance,
            "under-admitted: {admitted} < 95 % of {allowance:.1}"
        );
        // One write in flight per tenant and bucket: a process writes no more than it admits,
        // and once for each race it loses to the other process.
        assert!(writes <= 2 * admitted, "{writes} writes for {admitted} admitted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time on the machine's cores: run alone, as infra/test does"]
async fn sixty_four_keep_alive_clients_through_one_serve_process_get_the_allowance_and_no_more() {
    run(1, &[]).await.holds_the_allowance();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time on the machine's cores: run alone, as infra/test does"]
async fn sixty_four_keep_alive_clients_over_two_serve_processes_get_the_allowance_and_no_more() {
    run(2, &[]).await.holds_the_allowance();
}

/// The baseline of BENCHMARKS.md, run after the two above in the same run (`--ignored serve::`):
/// each process's requests race each other (`--no-coalesce`). Figures only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark baseline: run with --ignored serve::"]
async fn baseline_sixty_four_keep_alive_clients_through_racing_serve_processes() {
    for processes in [1, 2] {
        run(processes, &["--no-coalesce"]).await;
    }
}
