//! The real `glimpse serve` binary on loopback with the bundled model, driven over its
//! OpenAI-compatible HTTP API by a plain HTTP/1.0 client: completions equal the gRPC wire's
//! greedy text, chat goes through the same template as gRPC chat, SSE is well-formed, `n` choices
//! reproduce by seed, refusals carry OpenAI's error shape with gRPC's message and are counted, and
//! a client that leaves mid-stream gets its blocks freed. The `openai` Python package is driven in
//! `scripts/openai-check.sh`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, http_get, http_post, http_post_with, poll_until, runtime};
use glimpse_proto::v1;
use serde_json::{Value, json};

const CHAT_TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/openai-python/chat_template.jinja"
);

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http_post(server.http_port, path, &body.to_string());
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// The gRPC wire's greedy text for `input`.
fn grpc_greedy(server: &Server, input: v1::generate_request::Input, max_tokens: u32) -> String {
    runtime().block_on(async {
        let request = v1::GenerateRequest {
            input: Some(input),
            sampling: Some(v1::SamplingParameters {
                temperature: Some(0.0),
                ..Default::default()
            }),
            max_tokens: Some(max_tokens),
            ..Default::default()
        };
        let mut stream = server
            .client()
            .await
            .generate(request)
            .await
            .unwrap()
            .into_inner();
        let mut text = String::new();
        while let Some(message) = stream.message().await.unwrap() {
            if let Some(v1::generate_response::Kind::Chunk(c)) = message.kind {
                text.push_str(&c.text);
            }
        }
        text
    })
}

/// The `data:` payloads of an SSE response, checked for the framing on the way.
fn sse_events(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data event: {block:?}"));
        assert!(!data.contains('\n'), "one line per event: {block:?}");
        events.push(data.to_string());
    }
    events
}

#[test]
fn completions_match_the_grpc_wire_whole_and_streamed() {
    let server = Server::start();
    let request = json!({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0});
    let (status, body) = post(&server, "/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    let grpc = grpc_greedy(
        &server,
        v1::generate_request::Input::Text("Once upon a time".into()),
        64,
    );
    assert_eq!(text, grpc);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["object"], "text_completion");
    let usage = &body["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(5), Some(64))
    );
    assert_eq!(usage["kv_cache"]["policy"], "full");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, raw) = http_post(server.http_port, "/v1/completions", &streamed.to_string());
    assert_eq!(status, 200, "{raw}");
    let events = sse_events(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, grpc);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 64);
    assert!(
        body["choices"][0].get("token_ids").is_none(),
        "only when asked"
    );

    // vLLM's `return_token_ids`: the whole response's ids are the streamed chunks' ids.
    let with_ids = |mut request: Value| {
        request["return_token_ids"] = json!(true);
        request
    };
    let (_, whole) = post(&server, "/v1/completions", &with_ids(request));
    let ids = whole["choices"][0]["token_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 64);
    let (_, raw) = http_post(
        server.http_port,
        "/v1/completions",
        &with_ids(streamed).to_string(),
    );
    let events = sse_events(&raw);
    let streamed_ids: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["token_ids"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed_ids, ids);
}

#[test]
fn chat_uses_the_same_template_as_grpc_chat_and_n_choices_reproduce_by_seed() {
    let server = Server::start_with(&["--chat-template", CHAT_TEMPLATE]);
    let messages = json!([{"role": "user", "content": "Tell me a story"}]);
    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_completion_tokens": 24, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let chat = v1::ChatMessages {
        messages: vec![v1::ChatMessage {
            role: "user".into(),
            content: "Tell me a story".into(),
        }],
        ..Default::default()
    };
    let grpc = grpc_greedy(&server, v1::generate_request::Input::Chat(chat), 24);
    assert_eq!(body["choices"][0]["message"]["content"], grpc.as_str());
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");

    let sampled = json!({"prompt": "Lily", "max_tokens": 24, "temperature": 1, "seed": 7, "n": 2});
    let (_, first) = post(&server, "/v1/completions", &sampled);
    let (_, again) = post(&server, "/v1/completions", &sampled);
    let texts = |b: &Value| -> Vec<String> {
        b["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&first).len(), 2);
    assert_eq!(texts(&first), texts(&again), "the same seed reproduces");
    assert_ne!(
        texts(&first)[0],
        texts(&first)[1],
        "choice i samples with seed + i"
    );
    assert_eq!(first["usage"]["completion_tokens"], 48);
}

#[test]
fn refusals_carry_the_openai_shape_and_the_grpc_message_and_are_counted() {
    let server = Server::start_with(&["--http-max-body-bytes", "4096"]);
    let before = server
        .metric("glimpse_request_errors_total{code=\"INVALID_ARGUMENT\"}")
        .unwrap_or(0.0);
    let (status, body) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "temperature": -1}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "temperature");
    let grpc_message = runtime().block_on(async {
        let request = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Text("Hi".into())),
            sampling: Some(v1::SamplingParameters {
                temperature: Some(-1.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        server
            .client()
            .await
            .generate(request)
            .await
            .unwrap_err()
            .message()
            .to_string()
    });
    assert_eq!(body["error"]["message"], grpc_message.as_str());

    let (status, body) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": "ten"}),
    );
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("max_tokens"))
    );
    let (status, body) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "model": "gpt-4"}),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("model_not_found"))
    );
    let (status, _) = post(&server, "/v1/nothing", &json!({}));
    assert_eq!(status, 404);
    let (status, body) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "x".repeat(5000)}),
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--http-max-body-bytes")
    );
    let after = server
        .metric("glimpse_request_errors_total{code=\"INVALID_ARGUMENT\"}")
        .unwrap();
    assert_eq!(after - before, 3.0, "two HTTP refusals and one gRPC one");
}

/// A prompt past `--max-prompt-bytes` is refused before it is tokenized (completions, chat and
/// `/tokenize`: no job reaches the tokenizer pool) while health probes keep answering, and a
/// stop list past `--max-stop-strings` is refused; each refusal names the flag.
#[test]
fn a_huge_prompt_and_huge_stop_lists_are_refused_naming_their_limits() {
    let server = Server::start();
    let jobs = || server.metric("glimpse_tokenizer_jobs_total").unwrap();
    let jobs_before = jobs();
    let probing = AtomicBool::new(true);
    let answered = AtomicUsize::new(0);
    let huge = "a".repeat(4_000_000);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            while probing.load(Ordering::SeqCst) {
                let response = http_get(server.http_port, "/health");
                assert!(response.starts_with("HTTP/1.0 200"), "{response}");
                answered.fetch_add(1, Ordering::SeqCst);
            }
        });
        // The refusals start once the prober runs, so its probes overlap them (a prober thread
        // scheduled late on a busy machine would otherwise find the refusals over and probe
        // nothing). A prober that failed its first probe ends the wait; the scope re-raises it.
        poll_until("a first /health answer", Duration::from_secs(60), || {
            (answered.load(Ordering::SeqCst) > 0 || prober.is_finished()).then_some(())
        });
        huge_prompts_are_refused(&server, &huge);
        probing.store(false, Ordering::SeqCst);
    });
    let probes = answered.into_inner();
    assert!(probes > 0);
    assert_eq!(
        jobs(),
        jobs_before,
        "a refused prompt reached the tokenizer"
    );
    let (status, body) = post(&server, "/tokenize", &json!({"prompt": "Hi"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        jobs(),
        jobs_before + 1.0,
        "the tokenizer pool counts its jobs"
    );
    let stops = vec!["x"; 100_000];
    let (status, body) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2, "stop": stops}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stop");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--max-stop-strings") && message.contains("got 100000"),
        "{message}"
    );
}

/// `huge` as a completion prompt, a chat message and a `/tokenize` chat: each refused naming
/// `--max-prompt-bytes`.
fn huge_prompts_are_refused(server: &Server, huge: &str) {
    let started = Instant::now();
    let (status, body) = post(server, "/v1/completions", &json!({"prompt": huge}));
    println!("4 MB prompt refused after {:?}", started.elapsed());
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "prompt");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--max-prompt-bytes") && message.contains("4000000 bytes"),
        "{message}"
    );
    let chat = json!({"messages": [{"role": "user", "content": huge}]});
    for path in ["/v1/chat/completions", "/tokenize"] {
        let (status, body) = post(server, path, &chat);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["param"], "messages", "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--max-prompt-bytes"), "{path}: {message}");
    }
}

#[test]
fn info_endpoints_answer() {
    let server = Server::start();
    let models = http_get(server.http_port, "/v1/models");
    assert!(
        models.contains(r#""id":"stories260K""#) && models.contains(r#""max_model_len":512"#),
        "{models}"
    );
    assert!(http_get(server.http_port, "/version").contains(env!("CARGO_PKG_VERSION")));
    let (status, tokens) = post(&server, "/tokenize", &json!({"prompt": "Once upon a time"}));
    assert_eq!((status, tokens["count"].as_u64()), (200, Some(5)));
    let ids = tokens["tokens"].clone();
    let (_, text) = post(&server, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(text["prompt"], "Once upon a time");
    let (status, body) = post(&server, "/detokenize", &json!({"tokens": [99999]}));
    assert_eq!((status, &body["error"]["param"]), (400, &json!("tokens")));
}

#[test]
fn a_client_that_leaves_mid_stream_gets_its_blocks_freed() {
    let server = Server::start();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true,
        "temperature": 0, "stream": true})
    .to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let limit = Duration::from_secs(30);
    let used = || server.metric("glimpse_kv_blocks_used").unwrap_or(0.0);
    poll_until("blocks held by the running request", limit, || {
        (used() > 0.0).then_some(())
    });
    drop(reader);
    let aborted = || server.metric("glimpse_request_success_total{finished_reason=\"abort\"}");
    poll_until("blocks freed and an abort counted", limit, || {
        (used() == 0.0 && aborted() == Some(1.0)).then_some(())
    });
}

#[test]
fn each_failed_request_is_logged_once_with_its_id_code_and_message() {
    let server = Server::start();
    let bad_top_p = json!({"prompt": "Hi", "max_tokens": 2, "top_p": 2.0}).to_string();
    let post_with_id = |id: &str| {
        let headers = [("X-Request-Id", id)];
        http_post_with(server.http_port, "/v1/completions", &headers, &bad_top_p).0
    };
    assert_eq!(post_with_id("http-bad-top-p"), 400);
    let refused = runtime().block_on(async {
        let request = v1::GenerateRequest {
            request_id: Some("grpc-bad-top-p".into()),
            input: Some(v1::generate_request::Input::Text("Hi".into())),
            sampling: Some(v1::SamplingParameters {
                top_p: Some(2.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        server.client().await.generate(request).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A later failure's line proves the earlier ones had their chance to be logged twice.
    assert_eq!(post_with_id("sentinel"), 400);
    server.wait_for_log("sentinel", Duration::from_secs(30));
    for id in ["http-bad-top-p", "grpc-bad-top-p"] {
        let lines = server.log_lines(id);
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        assert!(
            lines[0].contains("INVALID_ARGUMENT") && lines[0].contains("top_p"),
            "{}",
            lines[0]
        );
    }
}

/// `glimpse bench` over both wires on the same seeded prompts: the HTTP run (`--backend openai`)
/// and the gRPC run generate the same ids for every request, greedy; an HTTP refusal is counted
/// under its status and fails the run.
#[test]
fn bench_over_http_and_grpc_agree_token_for_token() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bench = |backend: &str, endpoint: String, extra: &[&str]| {
        let texts = dir.path().join(format!("{backend}.jsonl"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["bench", "--backend", backend, "--endpoint", &endpoint])
            .args(["--model-dir", "models/stories260K", "--num-prompts", "6"])
            .args(["--input-len", "64", "--output-len", "24", "--seed", "3"])
            .args(["--temperature", "0", "--ignore-eos", "--output-texts"])
            .arg(&texts)
            .args(extra)
            .output()
            .expect("glimpse bench runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let ids: Vec<Value> = std::fs::read_to_string(&texts)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["token_ids"].clone())
            .collect();
        (out.status.success(), stderr, ids)
    };
    let http = format!("127.0.0.1:{}", server.http_port);
    let grpc = server.grpc.clone();
    let (ok, stderr, over_http) = bench("openai", http.clone(), &[]);
    assert!(ok, "{stderr}");
    let (ok, stderr, over_grpc) = bench("grpc", grpc, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(over_http.len(), 6);
    assert!(
        over_http
            .iter()
            .all(|ids| ids.as_array().is_some_and(|a| a.len() == 24))
    );
    assert_eq!(over_http, over_grpc);

    let (ok, stderr, _) = bench("openai", http, &["--budget", "0", "--policies", "snapkv"]);
    assert!(!ok, "a refused run fails: {stderr}");
    assert!(stderr.contains("HTTP 400"), "{stderr}");
}

/// A client that opens a streaming completion and never reads it holds its slots and KV blocks
/// only until the slow-reader timeout: the stream is then aborted (counted as `abort`, not
/// finished), its blocks freed, and the next client is served. Loopback sockets and the
/// server's write buffer take a few MiB before the server's sends wait, so the stream is made
/// larger than that: 16 choices of 480 tokens with 20 log-probabilities each (about 15 MiB of
/// events; measured: 4 choices with 5 log-probabilities, 1.5 MiB, were all buffered and
/// finished).
#[test]
fn an_sse_client_that_never_reads_loses_its_slots_after_the_idle_timeout() {
    let server = Server::start_with(&[
        "--max-num-seqs",
        "16",
        "--max-waiting",
        "0",
        "--stream-idle-timeout-secs",
        "1",
    ]);
    let body = json!({
        "prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": true, "stream": true,
        "logprobs": 20, "n": 16,
    })
    .to_string();
    let rt = runtime();
    let unread = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let address = ([127, 0, 0, 1], server.http_port).into();
        let mut stream = socket.connect(address).await.unwrap();
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        stream
    });
    server.wait_for_log(
        "the client did not read the response stream",
        Duration::from_secs(60),
    );
    server.wait_for_metric("glimpse_kv_blocks_used", 0.0, Duration::from_secs(30));
    let finished = |reason: &str| {
        let selector = format!("glimpse_request_success_total{{finished_reason=\"{reason}\"}}");
        server.metric(&selector).unwrap()
    };
    server.wait_for_metric(
        "glimpse_request_success_total{finished_reason=\"abort\"}",
        16.0,
        Duration::from_secs(30),
    );
    assert_eq!(finished("length"), 0.0, "the unread choices were aborted");
    let (status, answer) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2, "n": 16}),
    );
    assert_eq!(status, 200, "{answer}");
    drop(unread);
}
