//! The real `glimpse serve` binary on loopback against clients that hold connections: idle and
//! half-sent HTTP connections are closed after `--http-header-read-timeout-secs` (API and metrics
//! ports), a port past `--max-connections` leaves the next connection unserved until one closes,
//! and a server out of file descriptors backs off and warns once per interval instead of once per
//! failed accept, then serves again when descriptors come back.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{Server, poll_until, runtime};

/// Reads until the server closes `stream`; fails if it is still open after `limit`.
fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(error) => panic!("the server kept the connection open for {limit:?}: {error}"),
        }
    }
}

/// One keep-alive `GET /health` on `stream`, read through its `Content-Length`: the status line.
fn keep_alive_get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("a response");
        assert!(n > 0, "the server closed the connection");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                return head.lines().next().unwrap().to_string();
            }
        }
    }
}

#[test]
fn idle_and_half_sent_http_connections_are_closed_after_the_header_read_timeout() {
    let server = Server::start_with(&["--http-header-read-timeout-secs", "2"]);
    let limit = Duration::from_secs(15);
    let mut silent = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    write!(partial, "GET /health HTTP/1.1\r\nHost: loc").unwrap();
    let mut kept_alive = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    assert_eq!(
        keep_alive_get(&mut kept_alive, "/health"),
        "HTTP/1.1 200 OK"
    );
    let mut metrics_idle = TcpStream::connect(("127.0.0.1", server.metrics_port)).unwrap();
    for (what, stream) in [
        ("a connection that sends nothing", &mut silent),
        ("a partial header", &mut partial),
        (
            "a kept-alive connection after its response",
            &mut kept_alive,
        ),
        ("an idle metrics connection", &mut metrics_idle),
    ] {
        let waited = wait_for_close(stream, limit);
        println!("{what}: closed after {waited:?}");
    }
}

#[test]
fn past_max_connections_the_next_connection_waits_until_one_closes() {
    let server = Server::start_with(&[
        "--max-connections",
        "4",
        "--http-header-read-timeout-secs",
        "600",
    ]);
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
            assert_eq!(keep_alive_get(&mut stream, "/health"), "HTTP/1.1 200 OK");
            stream
        })
        .collect();
    let mut fifth = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    write!(fifth, "GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    // An absence can only be watched for a while: a served request answers in milliseconds.
    fifth
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 64];
    let error = fifth
        .read(&mut buf)
        .expect_err("the fifth connection is not served");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error}"
    );
    let lines = server.wait_for_log(
        "holds its limit of connections (--max-connections)",
        Duration::from_secs(10),
    );
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("port=\"HTTP\"")
            && lines[0].contains("limit=4"),
        "{lines:?}"
    );
    drop(held.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = String::new();
    fifth.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
}

/// The log lines about accepts failing for want of file descriptors (whatever their wording).
fn accept_failures(server: &Server) -> Vec<String> {
    server
        .log_lines("Too many open files")
        .into_iter()
        .filter(|line| line.contains("accept"))
        .collect()
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_warns_once_per_interval_and_recovers() {
    const NOFILE: libc::rlim_t = 128;
    let server = Server::spawn(&[], |command| {
        // SAFETY: only async-signal-safe setrlimit runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    server.wait_until_started();
    // Well past the server's descriptors, well inside the listen backlog (1024): a connection
    // past the backlog would block in `connect`.
    let most = 2 * NOFILE as usize;
    let mut clients = Vec::new();
    let first_warning = poll_until(
        "a warning about failed accepts",
        Duration::from_secs(60),
        || {
            for _ in 0..8 {
                if clients.len() < most {
                    clients.push(TcpStream::connect(("127.0.0.1", server.http_port)).unwrap());
                }
            }
            (!accept_failures(&server).is_empty()).then(Instant::now)
        },
    );
    println!("out of descriptors after {} connections", clients.len());
    // The one bounded hold: log volume is measured over an interval, here 5 s of failing
    // accepts (a loop logging each failure, or each second, writes many lines in it).
    std::thread::sleep(Duration::from_secs(5).saturating_sub(first_warning.elapsed()));
    let lines = accept_failures(&server);
    assert!(
        lines.len() <= 2,
        "{} lines about failed accepts in 5 s: {lines:#?}",
        lines.len()
    );
    assert!(
        lines[0].contains("WARN") && lines[0].contains("failed_accepts="),
        "{lines:?}"
    );
    drop(clients);
    server.wait_until_http_serving(Duration::from_secs(60));
    runtime().block_on(server.wait_until_serving(Duration::from_secs(60)));
    let mut stream = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    assert_eq!(keep_alive_get(&mut stream, "/health"), "HTTP/1.1 200 OK");
}
