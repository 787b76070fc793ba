//! The real `glimpse serve` binary on free loopback ports with the bundled model, shared by the
//! server's integration tests: start it, wait until it is serving (with a deadline), read metrics.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_proto::v1::generation_client::GenerationClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A server process on free loopback ports, killed on drop.
pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub metrics_port: u16,
    /// The OpenAI-compatible HTTP API.
    pub http_port: u16,
    /// The server's stderr (its log).
    pub log: tempfile::NamedTempFile,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Server::start`] with extra `glimpse serve` flags (which replace the harness's own
    /// `--kv-memory-bytes` and `--max-waiting` when given).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let server = Self::spawn(extra_args, |_| {});
        server.wait_until_started();
        server
    }

    /// Starts `glimpse serve` with `extra_args` as [`Server::start_with`] does, after `configure`
    /// has adjusted the command (resource limits, say), and returns without waiting for it.
    pub fn spawn(extra_args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let (port, metrics_port, http_port) = (free_port(), free_port(), free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        command
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "serve",
                "--port",
                &port.to_string(),
                "--metrics-port",
                &metrics_port.to_string(),
                "--http-port",
                &http_port.to_string(),
            ])
            .args(
                [["--kv-memory-bytes", "20000000"], ["--max-waiting", "200"]]
                    .iter()
                    .filter(|[flag, _]| !extra_args.contains(flag))
                    .flatten(),
            )
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        configure(&mut command);
        let child = command.spawn().expect("glimpse serve starts");
        Self {
            child,
            grpc: format!("http://127.0.0.1:{port}"),
            metrics_port,
            http_port,
            log,
        }
    }

    /// Waits until a plain-text, unauthenticated server answers metrics, gRPC health (SERVING)
    /// and HTTP `/health`.
    pub fn wait_until_started(&self) {
        let port = self.grpc.rsplit(':').next().unwrap();
        poll_until(
            "server up (metrics answering, gRPC port open)",
            Duration::from_secs(30),
            || {
                (self.metric("glimpse_kv_blocks_total").is_some()
                    && TcpStream::connect(format!("127.0.0.1:{port}")).is_ok())
                .then_some(())
            },
        );
        runtime().block_on(self.wait_until_serving(Duration::from_secs(60)));
        self.wait_until_http_serving(Duration::from_secs(60));
    }

    /// The log lines written so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Polls the log until a line contains `needle`; all such lines then.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Vec<String> {
        poll_until(&format!("a log line with {needle:?}"), limit, || {
            let lines = self.log_lines(needle);
            (!lines.is_empty()).then_some(lines)
        })
    }

    /// HTTP `/health` shares the serving state with gRPC health; polls until it answers 200.
    pub fn wait_until_http_serving(&self, limit: Duration) {
        poll_until("HTTP /health answering 200", limit, || {
            let status = TcpStream::connect(("127.0.0.1", self.http_port))
                .ok()
                .map(|_| http_get(self.http_port, "/health"));
            (status.as_deref().and_then(|r| r.split(' ').nth(1)) == Some("200")).then_some(())
        })
    }

    /// Polls `/metrics` until the series `selector` has the value `expected`.
    pub fn wait_for_metric(&self, selector: &str, expected: f64, limit: Duration) {
        poll_until(&format!("{selector} = {expected}"), limit, || {
            (self.metric(selector) == Some(expected)).then_some(())
        })
    }

    /// Open ports are not readiness: the warm-up generation runs after the listeners bind, and
    /// only then does health turn SERVING (and SIGTERM start draining). Polls until it does.
    pub async fn wait_until_serving(&self, limit: Duration) {
        let channel = self.channel().await;
        let deadline = Instant::now() + limit;
        loop {
            let status = serving_status(&channel).await;
            if status == ServingStatus::Serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health still {status:?} {limit:?} after the ports opened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> GenerationClient<Channel> {
        GenerationClient::connect(self.grpc.clone()).await.unwrap()
    }

    /// The value of the first series matching `selector` (`name` or `name{label="value",...}`)
    /// in `/metrics`: same name, and every label given with its value; labels not given (such
    /// as `model_name`, on every series) may take any value.
    pub fn metric(&self, selector: &str) -> Option<f64> {
        let wanted = Series::parse(selector);
        self.metrics_text()?.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series = Series::parse(series);
            let matches = series.name == wanted.name
                && wanted
                    .labels
                    .iter()
                    .all(|label| series.labels.contains(label));
            matches.then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// The sum of every series named `name`, whatever its labels (0 when there is none).
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text()?;
        let values = text.lines().filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (!line.starts_with('#') && Series::parse(series).name == name)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        });
        Some(values.sum())
    }

    /// The whole text of `/metrics` (None while the port does not answer).
    pub fn metrics_text(&self) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    }
}

/// A series as Prometheus' text format writes it: `name{label="value",...}`.
#[derive(Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl Series {
    /// Parses `name` or `name{k="v",...}` (values may hold escaped quotes and commas).
    pub fn parse(text: &str) -> Self {
        let Some((name, rest)) = text.split_once('{') else {
            return Self {
                name: text.trim().to_string(),
                labels: Vec::new(),
            };
        };
        let mut labels = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            let key: String = chars
                .by_ref()
                .skip_while(|c| *c == ',' || c.is_whitespace())
                .take_while(|c| *c != '=')
                .collect();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(
                chars.next(),
                Some('"'),
                "label {key} in {text} is not quoted"
            );
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        }
        Self {
            name: name.to_string(),
            labels,
        }
    }
}

impl Server {
    /// Sends `signal` (`TERM`, `INT`) to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit, and returns how it exited.
    pub fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        poll_until("the server's exit", limit, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `probe` every 20 ms until it gives a value, and returns it; fails naming `what` after
/// `limit`. Every wait of these tests is for its condition, never for a fixed time, so they hold on
/// a busy machine.
pub fn poll_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The health status of the generation service.
pub async fn serving_status(channel: &Channel) -> ServingStatus {
    health_of(channel, "glimpse.v1.Generation").await
}

/// The health status of `service` (`""`: the whole server, as probes ask).
pub async fn health_of(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Sends `request` (a whole HTTP/1.0 request) and reads until the server closes: the whole
/// response, status line and headers included.
pub fn http_exchange(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The status line and body of a plain HTTP/1.0 GET.
pub fn http_get(port: u16, path: &str) -> String {
    http_exchange(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
    )
}

/// An HTTP/1.0 POST of a JSON body: the status code and the response body.
pub fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    http_post_with(port, path, &[], body)
}

/// [`http_post`] with extra `(name, value)` headers.
pub fn http_post_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let response = http_post_raw(port, path, headers, body);
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// [`http_post_with`]'s exchange: the whole response, headers included.
pub fn http_post_raw(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    http_exchange(
        port,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}
