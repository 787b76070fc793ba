//! The real `glimpse serve` binary on loopback with TLS (`--tls-cert-file`, `--tls-key-file`, a
//! self-signed certificate made here) and bearer-token auth (`--auth-token-file`): real clients
//! (tonic with the CA, curl with `--cacert`) reach every port over TLS while plain text and an
//! unfinished handshake are turned away; requests without the token get UNAUTHENTICATED / 401,
//! counted and logged, health stays open, and the metrics port asks for the token when it is not
//! on loopback. Bad TLS and token files stop start-up naming the file or flag.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, poll_until, runtime};
use glimpse_proto::v1::{self, generation_client::GenerationClient};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

/// `curl` over TLS to `localhost:port` (resolved to 127.0.0.1) trusting `ca`: status and body.
fn curl(ca: &Path, port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(ca);
    command.args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .args([
            "-w",
            "\n%{http_code}",
            &format!("https://localhost:{port}{path}"),
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Everything the server sends back to a plain-text HTTP request until it closes.
fn plain_text_answer(port: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = write!(stream, "GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

async fn tls_channel(server: &Server, ca_pem: &str) -> Channel {
    let url = server.grpc.replace("http://", "https://");
    Endpoint::from_shared(url)
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[test]
fn with_tls_every_port_speaks_tls_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = self_signed(dir.path());
    let server = Server::spawn(
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-handshake-timeout-secs",
            "3",
        ],
        |_| {},
    );
    poll_until(
        "HTTPS /health answering 200",
        Duration::from_secs(90),
        || (curl(&cert, server.http_port, "/health", &[]).0 == 200).then_some(()),
    );
    runtime().block_on(async {
        let channel = tls_channel(&server, &ca_pem).await;
        assert_eq!(
            common::health_of(&channel, "").await,
            ServingStatus::Serving
        );
        let mut client = GenerationClient::new(channel);
        let mut stream = client.generate(short()).await.unwrap().into_inner();
        let mut responses = 0;
        while stream.message().await.unwrap().is_some() {
            responses += 1;
        }
        assert!(responses > 0);
        let plain = Channel::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await;
        if let Ok(plain) = plain {
            let refused = GenerationClient::new(plain).generate(short()).await;
            assert!(
                refused.is_err(),
                "plain-text gRPC was served over the TLS port"
            );
        }
    });
    let grpc_port = server.grpc.rsplit(':').next().unwrap();
    let health = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "health",
            "--endpoint",
            &format!("https://localhost:{grpc_port}"),
        ])
        .arg("--tls-ca-file")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let (status, models) = curl(&cert, server.http_port, "/v1/models", &[]);
    assert_eq!(status, 200, "{models}");
    assert!(models.contains(r#""id":"stories260K""#), "{models}");
    let (status, metrics) = curl(&cert, server.metrics_port, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("glimpse_kv_blocks_total"), "{metrics}");
    for port in [server.http_port, server.metrics_port] {
        let answer = plain_text_answer(port);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "port {port} answered plain text: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A client that connects and never says hello is closed after the handshake timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent TLS client was not closed: {read:?}"
    );
}

fn short() -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Text("Hi".into())),
        max_tokens: Some(2),
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A short completion on `port` with `authorization` as its header (none: no header): the whole
/// response, headers included.
fn completion(port: u16, authorization: Option<&str>) -> String {
    let headers: Vec<_> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let body = r#"{"model":"stories260K","prompt":"Hi","max_tokens":2}"#;
    common::http_post_raw(port, "/v1/completions", &headers, body)
}

#[test]
fn with_a_token_requests_need_it_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  s3cret-token\n").unwrap();
    // Loopback: the harness's readiness checks (gRPC health, HTTP /health, /metrics) need no
    // token, which is itself part of the contract.
    let server = Server::start_with(&["--auth-token-file", token_file.to_str().unwrap()]);
    runtime().block_on(async {
        let mut client = server.client().await;
        for request in [
            tonic::Request::new(short()),
            with_token(short(), "wrong-token"),
        ] {
            let status = client.generate(request).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("--auth-token-file"), "{status:?}");
        }
        let refused = client
            .tokenize(v1::TokenizeRequest {
                input: Some(v1::tokenize_request::Input::Text("Hi".into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        let mut stream = client
            .generate(with_token(short(), "s3cret-token"))
            .await
            .unwrap()
            .into_inner();
        while stream.message().await.unwrap().is_some() {}
    });
    for authorization in [None, Some("Bearer wrong"), Some("Basic s3cret-token")] {
        let response = completion(server.http_port, authorization);
        assert!(response.starts_with("HTTP/1.0 401"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{response}"
        );
        assert!(
            response.contains("\"code\":\"invalid_api_key\""),
            "{response}"
        );
    }
    let response = completion(server.http_port, Some("Bearer s3cret-token"));
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(common::http_get(server.http_port, "/health").starts_with("HTTP/1.0 200"));
    assert_eq!(
        server.metric("glimpse_request_errors_total{code=\"UNAUTHENTICATED\"}"),
        Some(6.0)
    );
    let refusals = server.log_lines("code=\"UNAUTHENTICATED\"");
    assert_eq!(refusals.len(), 6, "{refusals:#?}");
}

#[test]
fn off_loopback_the_metrics_port_needs_the_token_and_no_exposure_warning_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "m3trics\n").unwrap();
    let server = Server::spawn(
        &[
            "--host",
            "0.0.0.0",
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
        |_| {},
    );
    server.wait_until_http_serving(Duration::from_secs(90));
    let scrape = |authorization: &str| {
        common::http_exchange(
            server.metrics_port,
            &format!("GET /metrics HTTP/1.0\r\nHost: localhost\r\n{authorization}\r\n"),
        )
    };
    let refused = scrape("");
    assert!(refused.starts_with("HTTP/1.0 401"), "{refused}");
    let scraped = scrape("Authorization: Bearer m3trics\r\n");
    assert!(
        scraped.starts_with("HTTP/1.0 200") && scraped.contains("glimpse_kv_blocks_total"),
        "{scraped}"
    );
    assert!(server.log_lines("non-loopback").is_empty());
}

/// Runs `glimpse serve` with `args`, which must fail before loading anything: its stderr.
fn refused_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg("serve")
        .args(["--port", "0", "--http-port", "0", "--metrics-port", "0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_tls_and_token_files_stop_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let stderr = refused_start(&["--tls-cert-file", cert]);
    assert!(stderr.contains("--tls-key-file"), "{stderr}");
    let stderr = refused_start(&["--tls-key-file", key]);
    assert!(stderr.contains("--tls-cert-file"), "{stderr}");
    let missing = dir.path().join("absent.pem");
    let stderr = refused_start(&[
        "--tls-cert-file",
        missing.to_str().unwrap(),
        "--tls-key-file",
        key,
    ]);
    assert!(
        stderr.contains("cannot read --tls-cert-file file") && stderr.contains("absent.pem"),
        "{stderr}"
    );
    let stderr = refused_start(&["--tls-cert-file", key, "--tls-key-file", key]);
    assert!(
        stderr.contains("no PEM certificate") && stderr.contains("key.pem"),
        "{stderr}"
    );
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key, _) = self_signed(&other);
    let stderr = refused_start(&[
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        other_key.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("cannot be used with the certificate"),
        "{stderr}"
    );
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let stderr = refused_start(&["--auth-token-file", empty.to_str().unwrap()]);
    assert!(
        stderr.contains("holds no token") && stderr.contains("empty-token"),
        "{stderr}"
    );
}
