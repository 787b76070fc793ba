//! The soak: the real `glimpse serve` binary with the bundled model on loopback, a mixed gRPC
//! workload at 64 concurrent requests — 10 % cancelled (mid-stream or before the first token),
//! 10 % invalid (a rotation of refusal kinds), 20 % with a KV policy (LookaheadKV with the
//! bundled module, SnapKV, PyramidKV, StreamingLLM), the rest plain — in phases of 1,000
//! requests on one server: a warm-up, a baseline without hostile clients, then the soak with two
//! hostile clients running throughout (a slow reader that keeps opening streams it never reads,
//! on a connection with a 16-byte flow-control window, and a client whose stop lists sit at and
//! past their limits; both run in half the warm-up phases too).
//!
//! It asserts that every request ends with exactly one outcome (tokens then one `Final`, or one
//! error, or the cancel the client chose), that each kind ends as it must, that the server
//! counted exactly the refusals the clients saw and no fewer completions, that the other
//! clients' p99 time to first token with the hostile clients is within 2× of the baseline's,
//! that every KV block comes back (`glimpse_kv_blocks_used` 0 after each phase), and that the
//! server's peak resident memory after the warm-up stays within 10 % of its peak during it. The
//! numbers are printed.
//!
//! Ignored under `cargo test --workspace`, where it would share the two cores with every other
//! test binary and time their noise: `scripts/test.sh` runs it alone in its own step
//! (`--ignored --nocapture`), so its numbers appear in the CI log.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, runtime};
use glimpse_proto::v1::generate_request::Input;
use glimpse_proto::v1::generate_response::Kind;
use glimpse_proto::v1::generation_client::GenerationClient;
use glimpse_proto::v1::{self, KvPolicy};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Phases of 1,000 requests in the warm-up (the same mix, with and without the hostile clients in
/// turn), after which resident memory must stay flat: its peak in the baseline and the soak
/// within 10 % of its peak here. Measured in runs of up to 14 phases: the server's heap (RssAnon)
/// takes one step of about 2.8 MiB (8 % of its RSS) in its second, third or fourth phase, at a
/// different request each run, then grows by less than 0.3 % per phase; one long warm-up phase,
/// even of 7,000 requests, left the step for later.
const WARM_UP_PHASES: usize = 4;
const PHASE_REQUESTS: usize = 1_000;
const CONCURRENCY: usize = 64;
/// Connections the workload's requests are spread over.
const CONNECTIONS: usize = 8;
/// The slow reader's streams are given up after this many seconds unread.
const STREAM_IDLE_TIMEOUT_SECS: &str = "2";
/// Streams the slow reader keeps open at once; it opens one every 250 ms, so each stays open
/// past the idle timeout unless the server gives it up first.
const SLOW_STREAMS: usize = 16;

const PROMPTS: [&str; 6] = [
    "Once upon a time",
    "Lily and Tom went to the park. They saw a big dog.",
    "The little bird",
    "One day, a girl named Sue found a shiny red ball in the garden. She wanted to",
    "Tim had a toy car",
    "The sun was hot and the children were thirsty, so mom made",
];

/// What one request of the mix is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mix {
    Plain,
    Policy(KvPolicy),
    /// Refused with INVALID_ARGUMENT; the number picks the refusal.
    Invalid(usize),
    /// The client drops the stream after its first token.
    CancelMidStream,
    /// The client drops the stream before reading anything (the request may still be queued).
    CancelEarly,
}

/// The mix: per ten requests one invalid, one cancelled, two with a KV policy, six plain.
fn kind_of(i: usize) -> Mix {
    const POLICIES: [KvPolicy; 4] = [
        KvPolicy::Lookahead,
        KvPolicy::Snapkv,
        KvPolicy::Pyramidkv,
        KvPolicy::StreamingLlm,
    ];
    match i % 10 {
        0 => Mix::Invalid(i / 10),
        1 if (i / 10).is_multiple_of(2) => Mix::CancelMidStream,
        1 => Mix::CancelEarly,
        2 | 3 => Mix::Policy(POLICIES[(i / 5) % POLICIES.len()]),
        _ => Mix::Plain,
    }
}

fn text(i: usize) -> Option<Input> {
    Some(Input::Text(PROMPTS[i % PROMPTS.len()].into()))
}

/// Request `i` of the mix.
fn request(i: usize, kind: Mix) -> v1::GenerateRequest {
    let plain = v1::GenerateRequest {
        input: text(i),
        max_tokens: Some(8 + (i % 4) as u32 * 8),
        sampling: Some(v1::SamplingParameters {
            temperature: Some(0.8),
            seed: Some(i as u64),
            ..Default::default()
        }),
        ..Default::default()
    };
    match kind {
        Mix::Plain | Mix::CancelEarly => plain,
        Mix::CancelMidStream => v1::GenerateRequest {
            max_tokens: Some(64),
            ignore_eos: true,
            ..plain
        },
        Mix::Policy(policy) => v1::GenerateRequest {
            kv_cache: Some(v1::KvCachePolicy {
                policy: policy.into(),
                budget: Some(8),
                // SnapKV's and PyramidKV's observation window must be below the budget.
                window: matches!(policy, KvPolicy::Snapkv | KvPolicy::Pyramidkv).then_some(4),
                ..Default::default()
            }),
            ..plain
        },
        Mix::Invalid(n) => invalid(n, plain),
    }
}

/// One of five refusals: a negative temperature, a token id outside the vocabulary, one stop
/// string past `--max-stop-strings`, a prompt past `--max-prompt-bytes`, an unknown policy.
fn invalid(n: usize, plain: v1::GenerateRequest) -> v1::GenerateRequest {
    match n % 5 {
        0 => v1::GenerateRequest {
            sampling: Some(v1::SamplingParameters {
                temperature: Some(-1.0),
                ..Default::default()
            }),
            ..plain
        },
        1 => v1::GenerateRequest {
            input: Some(Input::TokenIds(v1::TokenIds {
                ids: vec![1, 1_000_000],
            })),
            ..plain
        },
        2 => v1::GenerateRequest {
            stop: vec!["x".into(); 17],
            ..plain
        },
        3 => v1::GenerateRequest {
            input: Some(Input::Text("a".repeat(20_000))),
            ..plain
        },
        _ => v1::GenerateRequest {
            kv_cache: Some(v1::KvCachePolicy {
                policy: 99,
                ..Default::default()
            }),
            ..plain
        },
    }
}

/// How a request ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Tokens, then exactly one `Final`, then the end of the stream.
    Finished {
        ttft: Duration,
    },
    /// Exactly one error, before or instead of any `Final`.
    Refused(Code),
    Cancelled,
}

/// Runs one request to its outcome; panics on a stream that breaks "exactly one outcome" (a
/// message after `Final`, a second `Final`, an error after `Final`, an end without either).
async fn run(
    client: &mut GenerationClient<Channel>,
    req: v1::GenerateRequest,
    kind: Mix,
) -> Outcome {
    let sent = Instant::now();
    let mut stream = match client.generate(req).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Outcome::Refused(status.code()),
    };
    if kind == Mix::CancelEarly {
        return Outcome::Cancelled;
    }
    let mut first_token = None;
    let mut finals = 0;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                assert_eq!(finals, 0, "an error after the Final: {status:?}");
                return Outcome::Refused(status.code());
            }
        };
        assert_eq!(finals, 0, "a message after the Final: {message:?}");
        match message.kind {
            Some(Kind::Chunk(chunk)) if !chunk.token_ids.is_empty() => {
                first_token.get_or_insert_with(|| sent.elapsed());
                if kind == Mix::CancelMidStream {
                    return Outcome::Cancelled;
                }
            }
            Some(Kind::Chunk(_)) => {}
            Some(Kind::Final(_)) => finals += 1,
            None => panic!("a response without a kind"),
        }
    }
    assert_eq!(finals, 1, "the stream ended without a Final");
    Outcome::Finished {
        ttft: first_token.expect("a finished request streamed a token"),
    }
}

/// What a phase's clients saw.
#[derive(Debug, Default)]
struct Tally {
    finished: usize,
    invalid: usize,
    cancelled: usize,
    ttfts: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, kind: Mix, outcome: Outcome) {
        match (kind, outcome) {
            (Mix::Plain | Mix::Policy(_), Outcome::Finished { ttft }) => {
                self.finished += 1;
                self.ttfts.push(ttft);
            }
            (Mix::Invalid(_), Outcome::Refused(Code::InvalidArgument)) => self.invalid += 1,
            (Mix::CancelMidStream | Mix::CancelEarly, Outcome::Cancelled) => self.cancelled += 1,
            // A cancelled request that finished before its first token was read.
            (Mix::CancelMidStream, Outcome::Finished { .. }) => self.finished += 1,
            (kind, outcome) => panic!("a {kind:?} request ended as {outcome:?}"),
        }
    }

    fn p99(&mut self) -> Duration {
        self.ttfts.sort();
        self.ttfts[(self.ttfts.len() * 99).div_ceil(100) - 1]
    }
}

async fn connect(server: &Server, window: Option<u32>) -> Channel {
    Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap()
}

/// `count` requests of the mix, numbered from `first`, at [`CONCURRENCY`] at once.
async fn phase(server: &Server, first: usize, count: usize) -> Tally {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(GenerationClient::new(connect(server, None).await));
    }
    let next = Arc::new(AtomicUsize::new(first));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let mut client = clients[w % CONNECTIONS].clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= first + count {
                        return tally;
                    }
                    let kind = kind_of(i);
                    let outcome = run(&mut client, request(i, kind), kind).await;
                    tally.record(kind, outcome);
                }
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.expect("a worker panicked");
        total.finished += tally.finished;
        total.invalid += tally.invalid;
        total.cancelled += tally.cancelled;
        total.ttfts.extend(tally.ttfts);
    }
    total
}

/// What the server logs when it gives up a stream its client does not read.
const GIVEN_UP: &str = "the client did not read the response stream";

/// Keeps [`SLOW_STREAMS`] streams open on a connection with a 16-byte window, never reading,
/// replacing each after the idle timeout, until `done` — and, on a machine fast enough to finish
/// the workload before any stream filled its window and outwaited the timeout, until the server
/// has given up at least one of them (a log line beyond the `given_up_before` the log held when
/// the phase began; within a deadline); returns how many it opened.
async fn slow_reader(server: &Server, done: Arc<AtomicBool>, given_up_before: usize) -> usize {
    let mut client = GenerationClient::new(connect(server, Some(16)).await);
    let mut open = std::collections::VecDeque::new();
    let mut opened = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let keep_going = || {
        !done.load(Ordering::SeqCst)
            || (server.log_lines(GIVEN_UP).len() == given_up_before && Instant::now() < deadline)
    };
    while keep_going() {
        if open.len() == SLOW_STREAMS {
            open.pop_front();
        }
        let long = v1::GenerateRequest {
            input: text(opened),
            max_tokens: Some(400),
            ignore_eos: true,
            ..Default::default()
        };
        open.push_back(
            client
                .generate(long)
                .await
                .expect("the slow reader is admitted"),
        );
        opened += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    opened
}

/// Sends requests whose stop lists sit at the limits (16 strings of 256 bytes, 64 stop token
/// ids) and, every third, one string past them, reading each to its end, until `done`.
async fn stop_list_client(server: &Server, done: Arc<AtomicBool>) -> Tally {
    let mut client = GenerationClient::new(connect(server, None).await);
    let mut tally = Tally::default();
    let mut i = 0;
    while !done.load(Ordering::SeqCst) {
        let over = i % 3 == 2;
        let strings = if over { 17 } else { 16 };
        let req = v1::GenerateRequest {
            input: text(i),
            max_tokens: Some(16),
            stop: (0..strings)
                .map(|s| format!("{s:03}{}", "z".repeat(253)))
                .collect(),
            stop_token_ids: (0..64).map(|t| 100 + t).collect(),
            ..Default::default()
        };
        let kind = if over { Mix::Invalid(0) } else { Mix::Plain };
        let outcome = run(&mut client, req, kind).await;
        tally.record(kind, outcome);
        i += 1;
    }
    tally
}

/// Resident memory of process `pid`, from /proc; `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The peak resident memory of the server per phase, sampled every 20 ms: a single sample lands
/// anywhere in the allocator's ups and downs (a few percent apart within one phase), the peak
/// does not.
struct PeakRss {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    fn sample(pid: u32) -> Self {
        let (peak_kib, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (peak, done) = (Arc::clone(&peak_kib), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { peak_kib, stop }
    }

    /// The peak since the last call.
    fn take(&self) -> u64 {
        self.peak_kib.swap(0, Ordering::SeqCst)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Server-side counters the clients' outcomes are checked against.
#[derive(Debug, Clone, Copy)]
struct Counts {
    completed: f64,
    invalid: f64,
}

fn counts(server: &Server) -> Counts {
    let success = |reason: &str| {
        let selector = format!("glimpse_request_success_total{{finished_reason=\"{reason}\"}}");
        server.metric(&selector).unwrap_or(0.0)
    };
    Counts {
        completed: success("stop") + success("length"),
        invalid: server
            .metric("glimpse_request_errors_total{code=\"INVALID_ARGUMENT\"}")
            .unwrap_or(0.0),
    }
}

/// Waits until no block is used and no request runs or waits.
fn wait_until_idle(server: &Server) {
    for series in [
        "glimpse_kv_blocks_used",
        "glimpse_num_requests_running",
        "glimpse_num_requests_waiting",
    ] {
        server.wait_for_metric(series, 0.0, Duration::from_secs(30));
    }
}

/// What a phase's clients saw, the hostile ones included.
struct PhaseResult {
    workload: Tally,
    /// Streams the slow reader opened (0 without hostile clients).
    slow_opened: usize,
    /// Of those, the streams the server gave up at the slow-reader timeout.
    given_up: usize,
    stop_lists: Tally,
}

/// `count` requests of the mix from `first`, with or without the hostile clients running
/// throughout; then waits until the server is idle and checks that it counted exactly the
/// refusals the clients saw, and completions between those the clients saw and those plus the
/// requests whose end nobody read (cancelled, or the slow reader's); with the hostile clients,
/// that the server gave up at least one of the slow reader's streams in this phase.
fn run_phase(server: &Server, first: usize, count: usize, hostile: bool) -> PhaseResult {
    let before = counts(server);
    let given_up_before = server.log_lines(GIVEN_UP).len();
    let done = Arc::new(AtomicBool::new(!hostile));
    let (workload, slow_opened, stop_lists) = runtime().block_on(async {
        let slow = async {
            if hostile {
                slow_reader(server, Arc::clone(&done), given_up_before).await
            } else {
                0
            }
        };
        let stops = stop_list_client(server, Arc::clone(&done));
        let work = async {
            let tally = phase(server, first, count).await;
            done.store(true, Ordering::SeqCst);
            tally
        };
        tokio::join!(work, slow, stops)
    });
    wait_until_idle(server);
    let after = counts(server);
    assert_eq!(
        workload.finished + workload.invalid + workload.cancelled,
        count,
        "every request ended with exactly one outcome"
    );
    assert_eq!(
        after.invalid - before.invalid,
        (workload.invalid + stop_lists.invalid) as f64,
        "the server refused exactly the requests its clients saw refused"
    );
    let completed = after.completed - before.completed;
    let seen = (workload.finished + stop_lists.finished) as f64;
    let unread = (workload.cancelled + slow_opened) as f64;
    assert!(
        completed >= seen && completed <= seen + unread,
        "the server completed {completed} requests; the clients saw {seen} finish and did not \
         read the end of {unread}"
    );
    let given_up = server.log_lines(GIVEN_UP).len() - given_up_before;
    assert!(
        !hostile || given_up > 0,
        "the slow reader's streams met the slow-reader timeout in this phase"
    );
    PhaseResult {
        workload,
        slow_opened,
        given_up,
        stop_lists,
    }
}

fn report(name: &str, result: &mut PhaseResult) -> Duration {
    let p99 = result.workload.p99();
    let w = &result.workload;
    println!(
        "soak: {name}: {} finished, {} refused as invalid, {} cancelled; p99 TTFT {p99:?}; slow \
         reader opened {} unread streams, {} given up; stop-list client {} finished, {} refused",
        w.finished,
        w.invalid,
        w.cancelled,
        result.slow_opened,
        result.given_up,
        result.stop_lists.finished,
        result.stop_lists.invalid
    );
    p99
}

#[test]
#[ignore = "run alone by scripts/test.sh: cargo test --workspace --locked --test soak -- --ignored --nocapture"]
fn a_mixed_workload_with_hostile_clients_loses_nothing_leaks_nothing_and_starves_no_one() {
    let started = Instant::now();
    let server = Server::start_with(&[
        "--lookahead-module",
        "models/stories260K-lookahead/lookahead.safetensors",
        "--max-waiting",
        "512",
        "--stream-idle-timeout-secs",
        STREAM_IDLE_TIMEOUT_SECS,
    ]);
    let rss = PeakRss::sample(server.child.id());
    for n in 0..WARM_UP_PHASES {
        let hostile = n % 2 == 0;
        let mut warm_up = run_phase(&server, n * PHASE_REQUESTS, PHASE_REQUESTS, hostile);
        report(&format!("warm-up {n} (hostile: {hostile})"), &mut warm_up);
    }
    let rss_warm = rss.take();
    let first = WARM_UP_PHASES * PHASE_REQUESTS;
    let mut baseline = run_phase(&server, first, PHASE_REQUESTS, false);
    let baseline_p99 = report("baseline, no hostile clients", &mut baseline);
    let mut soak = run_phase(&server, first + PHASE_REQUESTS, PHASE_REQUESTS, true);
    let soak_p99 = report("soak, with hostile clients", &mut soak);
    let rss_end = rss.take().max(rss_warm);
    let ratio = soak_p99.as_secs_f64() / baseline_p99.as_secs_f64();
    let growth = rss_end as f64 / rss_warm as f64 - 1.0;
    let given_up = server.log_lines(GIVEN_UP);
    println!(
        "soak: p99 TTFT ratio {ratio:.2} (limit 2); peak RSS {rss_warm} KiB in the warm-up, \
         {rss_end} KiB after it ({:+.1} %, limit +10 %); KV blocks used 0; {} unread \
         streams given up by the slow-reader timeout; {:.1} s in all",
        growth * 100.0,
        given_up.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        soak.stop_lists.finished > 0 && soak.stop_lists.invalid > 0 && !given_up.is_empty(),
        "the hostile clients ran, and the slow reader's streams met the slow-reader timeout"
    );
    assert!(
        ratio <= 2.0,
        "p99 TTFT {soak_p99:?} with the hostile clients, {baseline_p99:?} without"
    );
    assert!(
        growth < 0.10,
        "peak RSS grew from {rss_warm} KiB in the warm-up to {rss_end} KiB after it"
    );
}
