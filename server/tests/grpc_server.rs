//! The real `glimpse serve` binary on loopback with the bundled model, driven by a tonic client:
//! health, reflection, streamed text, 64 concurrent streams, every invalid parameter's status code,
//! a cancelled stream's blocks coming back, and `glimpse bench` against it. (It lives beside the
//! binary so the test can start it through `CARGO_BIN_EXE_glimpse`.)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Server, health_of, http_get, http_post, http_post_with, poll_until, runtime, serving_status,
};

use glimpse_proto::v1::{self, generation_client::GenerationClient};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn greedy(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Text(text.into())),
        sampling: Some(v1::SamplingParameters {
            temperature: Some(0.0),
            ..Default::default()
        }),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// Streams a request to the end: the text and the final message.
async fn generate(
    client: &mut GenerationClient<Channel>,
    request: v1::GenerateRequest,
) -> Result<(String, v1::Final), tonic::Status> {
    let mut stream = client.generate(request).await?.into_inner();
    let mut text = String::new();
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(v1::generate_response::Kind::Chunk(c)) => text.push_str(&c.text),
            Some(v1::generate_response::Kind::Final(f)) => return Ok((text, f)),
            None => {}
        }
    }
    panic!("the stream ended without a final message")
}

/// The services a reflection client of protocol `$version` lists: `v1`, or `v1alpha` (grpcurl
/// <= 1.8, Python `grpcio-reflection`). The two protocols have the same messages in different
/// packages, hence a macro rather than a function.
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("{} reflection did not list services", stringify!($version));
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[test]
fn health_is_serving_and_reflection_lists_the_service() {
    let server = Server::start();
    runtime().block_on(async {
        let channel = server.channel().await;
        assert_eq!(serving_status(&channel).await, ServingStatus::Serving);
        for names in [
            reflected_services!(v1, channel.clone()),
            reflected_services!(v1alpha, channel),
        ] {
            assert!(
                names.contains(&"glimpse.v1.Generation".to_string()),
                "{names:?}"
            );
            assert!(
                names.contains(&"grpc.health.v1.Health".to_string()),
                "{names:?}"
            );
        }
    });
}

#[test]
fn streamed_text_is_the_offline_greedy_continuation() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let (text, last) = generate(&mut client, greedy("Once upon a time", 64))
            .await
            .unwrap();
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../models/stories260K/golden.json")).unwrap();
        let expected = golden["generation_cases"][1]["greedy_text"]
            .as_str()
            .unwrap();
        assert_eq!(format!("Once upon a time{text}"), expected);
        assert_eq!(last.finish_reason(), v1::FinishReason::Length);
        let usage = last.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 64));
        let timings = last.timings.unwrap();
        assert!(timings.time_to_first_token_secs > 0.0);
        assert!(timings.time_to_first_token_secs <= timings.total_secs);
    });
}

#[test]
fn sixty_four_concurrent_streams_all_complete() {
    let server = Server::start();
    runtime().block_on(async {
        let client = server.client().await;
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let mut client = client.clone();
                let request = greedy(&format!("Lily and Tom {i}"), 24);
                tokio::spawn(async move { generate(&mut client, request).await })
            })
            .collect();
        for task in tasks {
            let (_, last) = task.await.unwrap().unwrap();
            assert_eq!(last.usage.unwrap().completion_tokens, 24);
        }
    });
    assert_eq!(server.metric("glimpse_kv_blocks_used"), Some(0.0));
}

#[test]
fn every_invalid_parameter_gets_its_status_code_naming_the_field() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let sampling = |s: v1::SamplingParameters| v1::GenerateRequest {
            sampling: Some(s),
            ..greedy("Hi", 4)
        };
        let params = v1::SamplingParameters::default;
        let ids = |ids: Vec<u32>| v1::GenerateRequest {
            input: Some(v1::generate_request::Input::TokenIds(v1::TokenIds { ids })),
            ..greedy("", 4)
        };
        let policy = |kind: v1::KvPolicy, knobs: fn(&mut v1::KvCachePolicy)| {
            let mut policy = v1::KvCachePolicy {
                policy: kind.into(),
                ..Default::default()
            };
            knobs(&mut policy);
            v1::GenerateRequest {
                kv_cache: Some(policy),
                ..greedy("Hi", 4)
            }
        };
        let cases: Vec<(v1::GenerateRequest, Code, &str)> = vec![
            (
                sampling(v1::SamplingParameters {
                    temperature: Some(-1.0),
                    ..params()
                }),
                Code::InvalidArgument,
                "temperature",
            ),
            (
                sampling(v1::SamplingParameters {
                    top_p: Some(1.5),
                    ..params()
                }),
                Code::InvalidArgument,
                "top_p",
            ),
            (
                sampling(v1::SamplingParameters {
                    min_p: Some(2.0),
                    ..params()
                }),
                Code::InvalidArgument,
                "min_p",
            ),
            (
                sampling(v1::SamplingParameters {
                    repetition_penalty: Some(0.0),
                    ..params()
                }),
                Code::InvalidArgument,
                "repetition_penalty",
            ),
            (
                sampling(v1::SamplingParameters {
                    presence_penalty: Some(3.0),
                    ..params()
                }),
                Code::InvalidArgument,
                "presence_penalty",
            ),
            (
                sampling(v1::SamplingParameters {
                    frequency_penalty: Some(-3.0),
                    ..params()
                }),
                Code::InvalidArgument,
                "frequency_penalty",
            ),
            (
                sampling(v1::SamplingParameters {
                    logprobs: true,
                    top_logprobs: 100,
                    ..params()
                }),
                Code::InvalidArgument,
                "logprobs",
            ),
            (
                v1::GenerateRequest {
                    max_tokens: Some(0),
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "max_tokens",
            ),
            (
                v1::GenerateRequest {
                    min_tokens: 9,
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "min_tokens",
            ),
            (
                v1::GenerateRequest {
                    stop: vec![String::new()],
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "stop",
            ),
            (
                v1::GenerateRequest {
                    stop_token_ids: vec![99_999],
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "stop_token_ids",
            ),
            (
                v1::GenerateRequest {
                    input: None,
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "input",
            ),
            (ids(vec![1, 70_000]), Code::InvalidArgument, "prompt"),
            (ids(vec![]), Code::InvalidArgument, "prompt"),
            (greedy("Hi", 600), Code::InvalidArgument, "512"),
            (
                v1::GenerateRequest {
                    kv_cache: Some(v1::KvCachePolicy {
                        policy: 42,
                        ..Default::default()
                    }),
                    ..greedy("Hi", 4)
                },
                Code::InvalidArgument,
                "kv_cache.policy",
            ),
            (
                policy(v1::KvPolicy::Snapkv, |p| p.budget = Some(0)),
                Code::InvalidArgument,
                "eviction.budget",
            ),
            (
                policy(v1::KvPolicy::Snapkv, |p| {
                    (p.budget, p.window) = (Some(16), Some(32));
                }),
                Code::InvalidArgument,
                "eviction.window",
            ),
            (
                policy(v1::KvPolicy::Snapkv, |p| p.pool_kernel = Some(4)),
                Code::InvalidArgument,
                "eviction.kernel",
            ),
            (
                policy(v1::KvPolicy::Pyramidkv, |p| p.beta = Some(2.5)),
                Code::InvalidArgument,
                "kv_cache.beta",
            ),
            (
                policy(v1::KvPolicy::Snapkv, |p| p.pool = 9),
                Code::InvalidArgument,
                "kv_cache.pool",
            ),
            (
                policy(v1::KvPolicy::Lookahead, |_| {}),
                Code::FailedPrecondition,
                "lookahead module",
            ),
        ];
        for (request, code, field) in cases {
            let status = generate(&mut client, request).await.unwrap_err();
            assert_eq!(status.code(), code, "{field}: {status:?}");
            assert!(
                status.message().contains(field),
                "`{}` does not name `{field}`",
                status.message()
            );
        }
        // The server keeps serving after all of that.
        assert!(generate(&mut client, greedy("Hi", 4)).await.is_ok());
    });
    assert!(
        server
            .metric("glimpse_request_errors_total{code=\"INVALID_ARGUMENT\"}")
            .unwrap()
            >= 16.0
    );
}

#[test]
fn a_snapkv_request_keeps_its_budget_and_frees_blocks_before_decoding() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let prompt: Vec<u32> = (0..300).map(|i| 3 + (i * 31) % 500).collect();
        let request = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::TokenIds(v1::TokenIds {
                ids: prompt,
            })),
            kv_cache: Some(v1::KvCachePolicy {
                policy: v1::KvPolicy::Snapkv.into(),
                budget: Some(64),
                ..Default::default()
            }),
            ignore_eos: true,
            ..greedy("", 8)
        };
        let (_, done) = generate(&mut client, request).await.unwrap();
        let usage = done.usage.unwrap();
        assert_eq!((usage.completion_tokens, usage.kv_entries_kept), (8, 64));
        // 300 entries held 19 blocks of 16; 64 need 4.
        assert_eq!(usage.kv_blocks_freed, 15);
        let applied = done.applied_policy.unwrap();
        assert_eq!(applied.policy, i32::from(v1::KvPolicy::Snapkv));
        assert_eq!((applied.budget, applied.window), (Some(64), Some(32)));
        assert!(done.timings.unwrap().eviction_secs > 0.0);
    });
    let evicted = "glimpse_kv_evicted_tokens_total{policy=\"snapkv\"}";
    assert_eq!(server.metric(evicted), Some(236.0));
    let freed = "glimpse_kv_blocks_freed_by_eviction_total{policy=\"snapkv\"}";
    assert_eq!(server.metric(freed), Some(15.0));
}

#[test]
fn a_cancelled_stream_frees_its_blocks() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let request = v1::GenerateRequest {
            ignore_eos: true,
            ..greedy("Once upon a time", 400)
        };
        let mut stream = client.generate(request).await.unwrap().into_inner();
        for _ in 0..3 {
            stream.message().await.unwrap().unwrap();
        }
        assert!(server.metric("glimpse_kv_blocks_used").unwrap() > 0.0);
        drop(stream);
    });
    server.wait_for_metric("glimpse_kv_blocks_used", 0.0, Duration::from_secs(10));
    assert_eq!(
        server.metric("glimpse_request_success_total{finished_reason=\"abort\"}"),
        Some(1.0)
    );
}

#[test]
fn sigterm_drains_running_requests_and_refuses_new_ones() {
    let mut server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let request = v1::GenerateRequest {
            ignore_eos: true,
            ..greedy("Once upon a time", 480)
        };
        let mut running = client.generate(request).await.unwrap().into_inner();
        running.message().await.unwrap().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The signal lands asynchronously: poll until admissions close rather than sleeping.
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = loop {
            match generate(&mut client, greedy("Hi", 4)).await {
                Err(refused) => break refused,
                Ok(_) => assert!(
                    Instant::now() < deadline,
                    "new requests still admitted 10 s after SIGTERM"
                ),
            }
        };
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        // The unread stream holds its admission slot, so the server is still draining: the HTTP
        // wire says so too — health 503, new completions refused with 503.
        let health = http_get(server.http_port, "/health");
        assert_eq!(health.get(9..12), Some("503"), "{health}");
        let (status, body) = http_post(
            server.http_port,
            "/v1/completions",
            r#"{"prompt": "Hi", "max_tokens": 2}"#,
        );
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("shutting down"), "{body}");
        let mut finished = None;
        while let Some(message) = running.message().await.unwrap() {
            if let Some(v1::generate_response::Kind::Final(f)) = message.kind {
                finished = Some(f);
            }
        }
        let finished = finished.expect("the running request finished during the drain");
        assert_eq!(finished.finish_reason(), v1::FinishReason::Length);
        assert_eq!(finished.usage.unwrap().completion_tokens, 480);
    });
    let status = server.wait_for_exit(Duration::from_secs(15));
    assert!(status.success(), "the server exited with {status}");
}

/// Probes (k8s, Docker HEALTHCHECK, `glimpse health`) ask the whole server, `service=""`: it must
/// say what the generation service says, NOT_SERVING while draining; a second signal ends the
/// drain at once with a non-zero status.
#[test]
fn overall_health_follows_the_drain_and_a_second_signal_exits_at_once() {
    let mut server = Server::start();
    runtime().block_on(async {
        let channel = server.channel().await;
        assert_eq!(health_of(&channel, "").await, ServingStatus::Serving);
        let mut client = server.client().await;
        let request = v1::GenerateRequest {
            ignore_eos: true,
            ..greedy("Once upon a time", 480)
        };
        // Left unread: its slot keeps the server draining.
        let mut running = client.generate(request).await.unwrap().into_inner();
        running.message().await.unwrap().unwrap();
        server.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while serving_status(&channel).await == ServingStatus::Serving {
            assert!(
                Instant::now() < deadline,
                "still SERVING 10 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(health_of(&channel, "").await, ServingStatus::NotServing);
        let unknown = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    });
    server.signal("TERM");
    let status = server.wait_for_exit(Duration::from_secs(10));
    assert!(
        !status.success(),
        "a second SIGTERM should exit non-zero: {status}"
    );
}

/// When the grace period is over, requests still running or waiting end with a Final message
/// whose reason is ABORT, not with an error, and the server exits cleanly.
#[test]
fn grace_period_expiry_ends_streams_with_final_abort() {
    let mut server = Server::start_with(&["--shutdown-grace-secs", "0", "--max-num-seqs", "1"]);
    runtime().block_on(async {
        let client = server.client().await;
        let mut streams = Vec::new();
        // With one running sequence at a time the last waits behind seven whole generations: it
        // is still queued when the signal lands.
        for _ in 0..8 {
            let request = v1::GenerateRequest {
                ignore_eos: true,
                ..greedy("Once upon a time", 480)
            };
            let stream = client.clone().generate(request).await.unwrap().into_inner();
            streams.push(stream);
        }
        streams[0].message().await.unwrap().unwrap();
        server.signal("TERM");
        let mut reasons = Vec::new();
        for stream in &mut streams {
            let mut last = None;
            while let Some(message) = stream.message().await.unwrap() {
                if let Some(v1::generate_response::Kind::Final(f)) = message.kind {
                    last = Some(f.finish_reason());
                }
            }
            reasons.push(last.expect("every stream ends with a Final message"));
        }
        assert_eq!(
            reasons.last(),
            Some(&v1::FinishReason::Abort),
            "{reasons:?}"
        );
    });
    let status = server.wait_for_exit(Duration::from_secs(15));
    assert!(status.success(), "the server exited with {status}");
}

/// A prompt past `--max-prompt-bytes` is refused before it is tokenized (generation and
/// Tokenize), and stop lists past their limits are refused; each refusal names the flag.
#[test]
fn a_huge_prompt_and_huge_stop_lists_are_refused_naming_their_limits() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let huge = "a".repeat(4_000_000);
        let started = Instant::now();
        let refused = client
            .generate(greedy(&huge, 4))
            .await
            .expect_err("a 4 MB prompt is refused");
        println!("4 MB prompt refused after {:?}", started.elapsed());
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("`text`")
                && refused.message().contains("--max-prompt-bytes")
                && refused.message().contains("4000000 bytes"),
            "{refused:?}"
        );
        let tokenize = v1::TokenizeRequest {
            input: Some(v1::tokenize_request::Input::Text(huge)),
            ..Default::default()
        };
        let refused = client.tokenize(tokenize).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("--max-prompt-bytes"),
            "{refused:?}"
        );
        let stops = v1::GenerateRequest {
            stop: vec!["x".into(); 100_000],
            ..greedy("Hi", 4)
        };
        let refused = client.generate(stops).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("--max-stop-strings")
                && refused.message().contains("got 100000"),
            "{refused:?}"
        );
        let stop_ids = v1::GenerateRequest {
            stop_token_ids: vec![1; 1_000],
            ..greedy("Hi", 4)
        };
        let refused = client.generate(stop_ids).await.unwrap_err();
        assert!(
            refused.message().contains("--max-stop-token-ids"),
            "{refused:?}"
        );
    });
}

/// Request ids are unique among live requests, across both wires and every endpoint that takes
/// one: a second request with the id of a running one is refused naming it (gRPC ALREADY_EXISTS,
/// HTTP 409 for `X-Request-Id`, tokenization included), and the id is free again once the first
/// request ended.
#[test]
fn a_live_request_id_is_refused_until_its_request_ends() {
    let server = Server::start();
    runtime().block_on(async {
        let mut client = server.client().await;
        let long = || v1::GenerateRequest {
            request_id: Some("job-7".into()),
            ignore_eos: true,
            ..greedy("Once upon a time", 480)
        };
        let mut running = client.generate(long()).await.unwrap().into_inner();
        running.message().await.unwrap().unwrap();
        let refused = client.generate(long()).await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
        assert!(refused.message().contains("`job-7`"), "{refused:?}");
        let (status, body) = http_post_with(
            server.http_port,
            "/v1/completions",
            &[("X-Request-Id", "job-7")],
            r#"{"prompt": "Hi", "max_tokens": 2}"#,
        );
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("`job-7`"), "{body}");
        for (path, body) in [
            ("/tokenize", r#"{"prompt": "Hi"}"#),
            ("/detokenize", r#"{"tokens": [1, 2]}"#),
        ] {
            let (status, answer) =
                http_post_with(server.http_port, path, &[("X-Request-Id", "job-7")], body);
            assert_eq!(status, 409, "{path}: {answer}");
            assert!(answer.contains("`job-7`"), "{path}: {answer}");
        }
        drop(running);
        // The dropped stream releases its id when the server notices: poll with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match generate(
                &mut client,
                v1::GenerateRequest {
                    request_id: Some("job-7".into()),
                    ..greedy("Hi", 2)
                },
            )
            .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
                    assert!(
                        Instant::now() < deadline,
                        "`job-7` still live 10 s after its stream was dropped"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
}

#[test]
fn metrics_port_zero_is_logged_and_serves_only_metrics() {
    use std::io::BufRead;

    let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["serve", "--port", "0", "--metrics-port", "0"])
        .args(["--http-port", "0"])
        .args(["--kv-memory-bytes", "20000000", "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("glimpse serve starts");
    // Read the log on its own thread (it keeps draining the pipe), so a server that never says
    // where it listens fails the test at the deadline instead of hanging it.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let listening = std::iter::from_fn(|| {
        log.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })
    .find(|line| line.contains("listening"));
    let port: Option<u16> = listening.as_deref().and_then(|line| {
        let addr = line.split("metrics=").nth(1)?.split_whitespace().next()?;
        addr.rsplit(':')
            .next()?
            .parse()
            .ok()
            .filter(|&port| port != 0)
    });
    let responses = port.map(|port| (http_get(port, "/metrics"), http_get(port, "/")));
    let _ = child.kill();
    let _ = child.wait();
    port.unwrap_or_else(|| panic!("no bound metrics port in {listening:?}"));
    let (metrics, other) = responses.unwrap();
    assert!(
        metrics.lines().next().unwrap().contains(" 200 "),
        "{metrics}"
    );
    assert!(metrics.contains("glimpse_kv_blocks_total"), "{metrics}");
    assert!(other.lines().next().unwrap().contains(" 404 "), "{other}");
}

/// `glimpse bench` as a newcomer runs it: the defaults (1024 + 128 tokens) do not fit the
/// bundled model, so it refuses before sending, naming the flags and the limit; a request the
/// server rejects is reported with its code and message and fails the run unless
/// `--allow-errors`; the endpoint may omit its scheme.
#[test]
fn bench_refuses_oversized_prompts_and_fails_on_failed_requests() {
    let server = Server::start();
    let endpoint = server.grpc.strip_prefix("http://").unwrap().to_owned();
    let bench = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .args(["bench", "--endpoint", &endpoint, "--num-prompts", "2"])
            .args(extra)
            .output()
            .expect("glimpse bench runs")
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let defaults = bench(&[]);
    assert!(!defaults.status.success(), "{}", stderr(&defaults));
    for needle in ["--input-len (1024)", "--output-len (128)", "512"] {
        assert!(stderr(&defaults).contains(needle), "{}", stderr(&defaults));
    }

    let jsonl = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-too-long.jsonl");
    let prompt = "word ".repeat(300);
    std::fs::write(
        &jsonl,
        format!("{{\"prompt\":\"{prompt}\",\"max_tokens\":500}}\n"),
    )
    .unwrap();
    let text_args = [
        "--dataset",
        "jsonl",
        "--dataset-path",
        jsonl.to_str().unwrap(),
    ];
    let rejected = bench(&text_args);
    assert!(!rejected.status.success(), "{}", stderr(&rejected));
    assert!(
        stderr(&rejected).contains("failed with InvalidArgument; first: prompt ("),
        "{}",
        stderr(&rejected)
    );
    let allowed = bench(&[&text_args[..], &["--allow-errors"]].concat());
    assert!(allowed.status.success(), "{}", stderr(&allowed));

    let fits = bench(&["--input-len", "16", "--output-len", "4"]);
    assert!(fits.status.success(), "{}", stderr(&fits));
}

/// Waits (60 s deadline) until the series `selector` reaches `at_least`.
fn wait_until_at_least(server: &Server, selector: &str, at_least: f64) {
    poll_until(
        &format!("{selector} >= {at_least}"),
        Duration::from_secs(60),
        || (server.metric(selector).unwrap_or(0.0) >= at_least).then_some(()),
    );
}

#[test]
fn the_warm_up_generation_is_not_counted_in_request_metrics() {
    let server = Server::start();
    for name in [
        "glimpse_request_success_total",
        "glimpse_prompt_tokens_total",
        "glimpse_generation_tokens_total",
        "glimpse_time_to_first_token_seconds_count",
        "glimpse_iteration_tokens_count",
    ] {
        assert_eq!(server.metric_sum(name), Some(0.0), "{name} after start-up");
    }
    // One request afterwards is counted as exactly one: the warm-up's steps never show up late.
    let usage = runtime().block_on(async {
        let (_, last) = generate(&mut server.client().await, greedy("Once upon", 4))
            .await
            .unwrap();
        last.usage.unwrap()
    });
    wait_until_at_least(&server, "glimpse_request_success_total", 1.0);
    assert_eq!(
        server.metric_sum("glimpse_request_success_total"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("glimpse_prompt_tokens_total"),
        Some(f64::from(usage.prompt_tokens))
    );
    assert_eq!(
        server.metric("glimpse_generation_tokens_total"),
        Some(f64::from(usage.completion_tokens))
    );
}

#[test]
fn every_metric_has_help_and_every_series_names_the_model() {
    let server = Server::start();
    runtime().block_on(async {
        // An error, so that the error counter exists too.
        let mut client = server.client().await;
        let status = generate(&mut client, greedy("Hi", 0)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    });
    wait_until_at_least(&server, "glimpse_request_errors_total", 1.0);
    let text = server.metrics_text().unwrap();
    let mut series = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (selector, _) = line.rsplit_once(' ').unwrap();
        let parsed = common::Series::parse(selector);
        let model = ("model_name".to_string(), "stories260K".to_string());
        assert!(parsed.labels.contains(&model), "{line} has no model_name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| parsed.name.strip_suffix(suffix))
            .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(&parsed.name);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {family} ")) && l.len() > 12 + family.len()),
            "{family} has no # HELP line"
        );
        series += 1;
    }
    assert!(series > 20, "only {series} series exported");
    for name in [
        "glimpse_request_errors_total",
        "glimpse_kv_cache_usage_ratio",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
}

/// docs/design.md §7: the same prompt twice is served the second time from the prefix cache
/// (vLLM's token counts: both requests query their prompt, the second hits its full blocks but
/// the last token), with the same text; `--enable-prefix-caching false` counts nothing.
#[test]
fn a_repeated_prompt_hits_the_prefix_cache_unless_caching_is_off() {
    let prompt = "Once upon a time, there was a little girl named Lily. She loved to play \
                  outside in the park with her friends, and one day she found a big red ball.";
    for (flags, caching) in [
        (&[][..], true),
        (&["--enable-prefix-caching", "false"][..], false),
    ] {
        let server = Server::start_with(flags);
        let (texts, prompt_tokens) = runtime().block_on(async {
            let mut client = server.client().await;
            let mut texts = Vec::new();
            let mut prompt_tokens = 0;
            for _ in 0..2 {
                let (text, last) = generate(&mut client, greedy(prompt, 8)).await.unwrap();
                prompt_tokens = last.usage.unwrap().prompt_tokens as usize;
                texts.push(text);
            }
            (texts, prompt_tokens)
        });
        assert_eq!(texts[0], texts[1]);
        assert!(prompt_tokens > 32, "the prompt spans full blocks of 16");
        let (queries, hits) = match caching {
            true => (2 * prompt_tokens, (prompt_tokens - 1) / 16 * 16),
            false => (0, 0),
        };
        let limit = Duration::from_secs(10);
        server.wait_for_metric("glimpse_prefix_cache_queries_total", queries as f64, limit);
        assert_eq!(
            server.metric("glimpse_prefix_cache_hits_total"),
            Some(hits as f64)
        );
        let cached = server.metric("glimpse_kv_blocks_cached").unwrap();
        assert_eq!(cached > 0.0, caching, "{cached} cached blocks");
    }
}
