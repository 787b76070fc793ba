//! Reads KV cache gauges from the server's Prometheus `/metrics` endpoint before, during
//! and after a run, so the report can show peak KV usage per policy: the number eviction
//! is meant to lower.
//!
//! The endpoint is plain HTTP on the server's own host, so a minimal HTTP/1.1 GET over a
//! `TcpStream` does; this keeps an HTTP client stack (and its TLS) out of the build.
//! Parsing is pure and tested; only [`fetch`] touches the network.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fraction of KV blocks in use, 0..=1.
pub const KV_USAGE_RATIO: &str = "glimpse_kv_cache_usage_ratio";
/// KV blocks in use.
pub const KV_BLOCKS_USED: &str = "glimpse_kv_blocks_used";
/// Requests the engine is running (admitted, holding KV blocks).
pub const REQUESTS_RUNNING: &str = "glimpse_num_requests_running";

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("--metrics-url {0:?} is not http://HOST:PORT/PATH")]
    Url(String),
    #[error("scraping {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("scraping {url}: timed out")]
    Timeout { url: String },
    #[error("scraping {url}: {message}")]
    Http { url: String, message: String },
}

/// A parsed `http://host:port/path`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsUrl {
    raw: String,
    authority: String,
    path: String,
}

impl std::str::FromStr for MetricsUrl {
    type Err = ScrapeError;

    /// Accepts `http://HOST:PORT[/PATH]`; the path defaults to `/metrics`.
    fn from_str(raw: &str) -> Result<Self, ScrapeError> {
        let rest = raw
            .strip_prefix("http://")
            .ok_or_else(|| ScrapeError::Url(raw.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if !authority.contains(':') || authority.ends_with(':') {
            return Err(ScrapeError::Url(raw.to_owned()));
        }
        Ok(Self {
            raw: raw.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Value of the sample(s) of `name` in Prometheus text format, summed over label sets
/// (a gauge exported per engine or per device adds up). `None` when absent.
pub fn gauge_value(exposition: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `rest` starts with the labels or the value; reject longer names sharing a prefix.
        let rest = match rest.chars().next() {
            Some('{') => &rest[rest.find('}')? + 1..],
            Some(' ' | '\t') => rest,
            _ => continue,
        };
        // The value, then an optional timestamp.
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// The body of an HTTP/1.1 response, de-chunked if needed. Errors on a non-200 status.
pub fn http_body(response: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines.next().ok_or("empty response")?;
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status line {status:?}"));
    }
    let chunked = lines.any(|h| {
        let h = h.to_ascii_lowercase();
        h.starts_with("transfer-encoding:") && h.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_owned());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size_line, after) = rest.split_once("\r\n").ok_or("truncated chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or("missing chunk end")?;
    }
}

/// GETs the exposition text. The caller owes nothing; the connection is closed after.
pub async fn fetch(url: &MetricsUrl, timeout: Duration) -> Result<String, ScrapeError> {
    let io = |source| ScrapeError::Io {
        url: url.raw.clone(),
        source,
    };
    let request = async {
        let mut stream = TcpStream::connect(&url.authority).await.map_err(io)?;
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
            url.path, url.authority
        );
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(io)?;
        http_body(&response).map_err(|message| ScrapeError::Http {
            url: url.raw.clone(),
            message,
        })
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| ScrapeError::Timeout {
            url: url.raw.clone(),
        })?
}

/// The KV gauges at one instant; a gauge the server does not export is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct KvSample {
    pub usage_ratio: Option<f64>,
    pub blocks_used: Option<f64>,
    /// Requests running in the engine: the concurrency the KV pool allowed, unlike the
    /// client's in-flight count, which includes queued requests.
    pub requests_running: Option<f64>,
}

impl KvSample {
    /// Reads the gauges from an exposition.
    pub fn parse(exposition: &str) -> Self {
        Self {
            usage_ratio: gauge_value(exposition, KV_USAGE_RATIO),
            blocks_used: gauge_value(exposition, KV_BLOCKS_USED),
            requests_running: gauge_value(exposition, REQUESTS_RUNNING),
        }
    }
}

/// KV usage over a run: before it started, the peak while it ran, after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct KvUsage {
    pub before: KvSample,
    pub peak: KvSample,
    pub after: KvSample,
    /// Scrapes that succeeded during the run (the peak is only as good as these).
    pub samples: usize,
}

impl KvUsage {
    /// Folds one in-run sample into the peak.
    pub fn observe(&mut self, sample: KvSample) {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.peak.usage_ratio = max(self.peak.usage_ratio, sample.usage_ratio);
        self.peak.blocks_used = max(self.peak.blocks_used, sample.blocks_used);
        self.peak.requests_running = max(self.peak.requests_running, sample.requests_running);
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP glimpse_kv_cache_usage_ratio Fraction of KV blocks in use.
# TYPE glimpse_kv_cache_usage_ratio gauge
glimpse_kv_cache_usage_ratio 0.25
glimpse_kv_cache_usage_ratio_other 9
glimpse_kv_blocks_used{device=\"0\"} 10 1700000000000
glimpse_kv_blocks_used{device=\"1\"} 6
";

    #[test]
    fn gauges_are_read_by_exact_name_and_summed_over_labels() {
        assert_eq!(gauge_value(EXPOSITION, KV_USAGE_RATIO), Some(0.25));
        assert_eq!(gauge_value(EXPOSITION, KV_BLOCKS_USED), Some(16.0));
        assert_eq!(gauge_value(EXPOSITION, "glimpse_missing"), None);
    }

    #[test]
    fn peaks_keep_the_largest_value_seen_of_each_gauge() {
        let mut usage = KvUsage::default();
        usage.observe(KvSample {
            usage_ratio: Some(0.5),
            blocks_used: None,
            requests_running: Some(3.0),
        });
        usage.observe(KvSample {
            usage_ratio: Some(0.3),
            blocks_used: Some(7.0),
            requests_running: Some(5.0),
        });
        assert_eq!(
            usage.peak,
            KvSample {
                usage_ratio: Some(0.5),
                blocks_used: Some(7.0),
                requests_running: Some(5.0),
            }
        );
        assert_eq!(usage.samples, 2);
    }

    #[test]
    fn http_bodies_are_read_plain_or_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(http_body(plain).unwrap(), "abc");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), "abcde");
        assert!(http_body(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }

    #[test]
    fn metrics_urls_need_a_port_and_default_to_the_metrics_path() {
        let url: MetricsUrl = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("127.0.0.1:9000", "/metrics")
        );
        let url: MetricsUrl = "http://localhost:9000/m".parse().unwrap();
        assert_eq!(url.path, "/m");
        assert!("https://x:1/metrics".parse::<MetricsUrl>().is_err());
        assert!("http://localhost/metrics".parse::<MetricsUrl>().is_err());
    }
}
