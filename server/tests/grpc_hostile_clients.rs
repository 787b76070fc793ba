//! The real `glimpse serve` binary on loopback against requests tonic refuses before a handler
//! runs: bytes that are not a valid message (malformed protobuf, a string field that is not
//! UTF-8) get INVALID_ARGUMENT and a message over `--max-message-bytes` RESOURCE_EXHAUSTED, each
//! counted in `glimpse_request_errors_total`; a client that never reads its stream, which loses
//! its slot after `--stream-idle-timeout-secs`; one connection opening 1,280 such streams, which
//! gets no more than `--max-concurrent-streams` of them; and a request cancelled while queued,
//! which frees its slot at once. The raw bytes go through tonic's own client
//! with a codec that sends them as they are.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::{Server, runtime};
use glimpse_proto::v1::{self, generation_client::GenerationClient};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends each message's bytes unchanged and hands back each response's bytes undecoded.
#[derive(Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The status of a call of `method` on the Generation service with `bytes` as its message.
async fn raw_call(channel: &Channel, method: &'static str, bytes: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(method);
    grpc.unary::<_, Vec<u8>, _>(tonic::Request::new(bytes), path, RawBytes)
        .await
        .expect_err("the server refuses the message")
}

fn errors(server: &Server, code: &str) -> f64 {
    server
        .metric(&format!("glimpse_request_errors_total{{code=\"{code}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn undecodable_and_oversized_messages_get_the_conventional_codes_and_are_counted() {
    let server = Server::start_with(&["--max-message-bytes", "1000"]);
    runtime().block_on(async {
        let channel = server.channel().await;
        // Field 1 (`request_id`, a string) announcing 100 bytes and ending after 2.
        let truncated = vec![0x0a, 100, b'a', b'b'];
        // Field 1 holding two bytes that are not UTF-8.
        let not_utf8 = vec![0x0a, 2, 0xff, 0xfe];
        for (method, bytes) in [
            ("/glimpse.v1.Generation/Generate", truncated),
            ("/glimpse.v1.Generation/Generate", not_utf8),
            ("/glimpse.v1.Generation/Tokenize", vec![0xff; 8]),
        ] {
            let status = raw_call(&channel, method, bytes).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(
                status
                    .message()
                    .starts_with("the request message cannot be decoded: "),
                "{status:?}"
            );
        }
        let mut client = server.client().await;
        let large = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Text("a".repeat(2000))),
            ..Default::default()
        };
        let status = client.generate(large).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("limit of 1000 bytes (--max-message-bytes)")
                && status.message().contains("2003"),
            "{status:?}"
        );
        // A request within the limit is still served.
        let mut stream = client.generate(short("Hi")).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
    });
    assert_eq!(errors(&server, "INVALID_ARGUMENT"), 3.0);
    assert_eq!(errors(&server, "RESOURCE_EXHAUSTED"), 1.0);
    assert_eq!(errors(&server, "INTERNAL"), 0.0);
    assert_eq!(errors(&server, "OUT_OF_RANGE"), 0.0);
}

/// A client that opens a long stream with a tiny flow-control window and never reads holds its
/// admission slot only until the slow-reader timeout: the stream is then aborted, its KV blocks
/// freed, and another client's request is admitted.
#[test]
fn a_client_that_never_reads_loses_its_slot_after_the_idle_timeout() {
    let server = Server::start_with(&[
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "0",
        "--stream-idle-timeout-secs",
        "2",
    ]);
    runtime().block_on(async {
        let slow_channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
            .unwrap()
            .initial_stream_window_size(16)
            .connect()
            .await
            .unwrap();
        let mut slow = GenerationClient::new(slow_channel);
        let long = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Text("Once upon a time".into())),
            max_tokens: Some(400),
            ignore_eos: true,
            ..Default::default()
        };
        let unread = slow.generate(long).await.unwrap();
        let mut client = server.client().await;
        let small = || short("Hi");
        let refused = client.generate(small()).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let mut stream = loop {
            match client.generate(small()).await {
                Ok(response) => break response.into_inner(),
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "the non-reading client still holds the only slot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("admitted {:?} after the slow reader", started.elapsed());
        while stream.message().await.unwrap().is_some() {}
        server.wait_for_metric("glimpse_kv_blocks_used", 0.0, Duration::from_secs(10));
        assert!(
            !server
                .log_lines("the client did not read the response stream")
                .is_empty()
        );
        drop(unread);
    });
}

/// One HTTP/2 connection opening 1,280 long streams with a 16-byte flow-control window and
/// reading none (the finding: it held every admission slot while it stayed open) gets
/// `--max-concurrent-streams` (64) at a time, the rest waiting in the client; each is given up at
/// the slow-reader timeout. So a second client's request is admitted at once, while the
/// connection still has streams waiting, and served: it does not wait for the timeout.
#[test]
fn one_connection_with_1280_unread_streams_does_not_starve_a_second_client() {
    let server = Server::start_with(&[
        "--max-concurrent-streams",
        "64",
        "--stream-idle-timeout-secs",
        "2",
    ]);
    let hostile = runtime();
    let opened = Arc::new(AtomicUsize::new(0));
    let channel = hostile.block_on(async {
        tonic::transport::Endpoint::from_shared(server.grpc.clone())
            .unwrap()
            .initial_stream_window_size(16)
            .connect()
            .await
            .unwrap()
    });
    for _ in 0..1_280 {
        let mut client = GenerationClient::new(channel.clone());
        let opened = Arc::clone(&opened);
        hostile.spawn(async move {
            let long = v1::GenerateRequest {
                input: Some(v1::generate_request::Input::Text("Once upon a time".into())),
                max_tokens: Some(400),
                ignore_eos: true,
                ..Default::default()
            };
            let unread = client.generate(long).await;
            opened.fetch_add(1, Ordering::SeqCst);
            // Holds the response, unread, until the runtime is dropped.
            let _unread = unread;
            std::future::pending::<()>().await;
        });
    }
    common::poll_until(
        "64 streams of the hostile connection",
        Duration::from_secs(60),
        || (opened.load(Ordering::SeqCst) >= 64).then_some(()),
    );
    runtime().block_on(async {
        let mut client = server.client().await;
        let started = Instant::now();
        let mut stream = client
            .generate(short("Hi"))
            .await
            .expect("a second client is admitted while the hostile connection is open")
            .into_inner();
        while stream.message().await.unwrap().is_some() {}
        println!(
            "the second client's request ended {:?} after it was sent; the hostile connection \
             had opened {} of its 1,280 streams",
            started.elapsed(),
            opened.load(Ordering::SeqCst)
        );
    });
    assert!(
        opened.load(Ordering::SeqCst) < 1_280,
        "the connection's streams are not all open yet: the test ran while it was hostile"
    );
    drop(hostile);
    server.wait_for_metric("glimpse_kv_blocks_used", 0.0, Duration::from_secs(30));
}

fn short(text: &str) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Text(text.into())),
        max_tokens: Some(2),
        ..Default::default()
    }
}

/// With one running slot and one waiting slot both taken, cancelling the waiting request frees
/// its slot at once: a third request is admitted while the first is still generating (the
/// engine has not reached the cancelled one).
#[test]
fn a_request_cancelled_while_queued_frees_its_slot_at_once() {
    // The retrieval model is slower per token than the bundled one: the first request's 600
    // tokens take about a second, a thousand times the ~1 ms a promptly noticed cancel needs, so
    // the test holds on a loaded machine too.
    let server = Server::start_with(&[
        "--model",
        "models/retrieval-byte-6l",
        "--kv-memory-bytes",
        "200000000",
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "1",
    ]);
    runtime().block_on(async {
        let mut client = server.client().await;
        let long = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Text("Once".into())),
            max_tokens: Some(600),
            ignore_eos: true,
            ..Default::default()
        };
        let mut running = client.generate(long).await.unwrap().into_inner();
        running.message().await.unwrap().unwrap();
        let queued = client.generate(short("Hi")).await.unwrap();
        let refused = client.generate(short("Hi")).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        drop(queued);
        let cancelled = Instant::now();
        let deadline = cancelled + Duration::from_secs(10);
        let mut third = loop {
            match client.generate(short("Hi")).await {
                Ok(response) => break response.into_inner(),
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "the cancelled request kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(
            server.metric("glimpse_request_success_total{finished_reason=\"length\"}"),
            Some(0.0),
            "the first request had already finished: the slot came back only with it"
        );
        println!(
            "third request admitted {:?} after the cancel",
            cancelled.elapsed()
        );
        while running.message().await.unwrap().is_some() {}
        println!(
            "first request ended {:?} after the cancel",
            cancelled.elapsed()
        );
        while third.message().await.unwrap().is_some() {}
    });
    assert_eq!(
        server.metric("glimpse_request_success_total{finished_reason=\"abort\"}"),
        Some(1.0)
    );
}

#[test]
fn binding_a_non_loopback_address_warns_at_start_up() {
    let server = Server::start_with(&["--host", "0.0.0.0"]);
    let lines = server.wait_for_log(
        "listening on a non-loopback address",
        Duration::from_secs(10),
    );
    assert!(
        lines[0].contains("WARN") && lines[0].contains("0.0.0.0"),
        "{lines:?}"
    );
    let local = Server::start();
    assert!(local.log_lines("non-loopback").is_empty());
}
