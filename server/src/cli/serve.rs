//! `glimpse serve`: the gRPC generation service, the standard health and reflection services, the
//! OpenAI-compatible HTTP API and the Prometheus endpoint, over one engine thread. Health (gRPC,
//! for `""` and `glimpse.v1.Generation` alike, and HTTP `/health`) reads the one state in
//! [`Admission`]: SERVING only after the model is loaded and a warm-up generation succeeded, until
//! a shutdown signal or the engine thread's end. SIGTERM/SIGINT are handled from the start: during
//! warm-up they exit at once (status 0); later they stop admissions (new requests UNAVAILABLE /
//! 503) and let running requests finish for a grace period, after which the engine ends the rest
//! with finish reason ABORT; a second signal during the drain exits at once with status 1. If the
//! engine thread stops on its own the process exits with status 1, so an orchestrator restarts it.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use clap::builder::TypedValueParser;
use glimpse_engine::eviction::PolicyKind;
use glimpse_engine::sampling::SamplingParams;
use glimpse_proto::v1;
use glimpse_server::admission::Admission;
use glimpse_server::auth::BearerToken;
use glimpse_server::engine_loop::{self, GenerationRequest, StopConditions};
use glimpse_server::grpc::{
    DecodeRefusals, GenerationService, TokenCheck, policy_message, wire_policy,
};
use glimpse_server::http::HttpState;
use glimpse_server::metrics::{self, BuildInfo, EngineMetrics};
use glimpse_server::net::{self, Protocol};
use glimpse_server::prompt::PromptWork;
use glimpse_server::stats_log::StatsLog;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use super::{EngineArgs, LoadedEngine};

#[derive(Args)]
#[command(after_help = glimpse_server::validation::SAMPLING_DEFAULTS_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to bind (use 0.0.0.0 in containers).
    #[arg(long, default_value = "127.0.0.1", env = "GLIMPSE_HOST")]
    host: IpAddr,
    /// gRPC port (0 picks a free one and logs it).
    #[arg(long, default_value_t = 50051, env = "GLIMPSE_PORT")]
    port: u16,
    /// Port of the OpenAI-compatible HTTP API, on the same host; 0 disables it.
    #[arg(long, default_value_t = 8000, env = "GLIMPSE_HTTP_PORT")]
    http_port: u16,
    /// Largest HTTP request body in bytes; larger ones are refused with 413.
    #[arg(long, default_value_t = 8 << 20, env = "GLIMPSE_HTTP_MAX_BODY_BYTES")]
    http_max_body_bytes: usize,
    /// Largest gRPC request message in bytes (tonic's default); larger ones are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4 << 20, env = "GLIMPSE_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
    /// Seconds a response stream may wait for its client to read (gRPC and HTTP SSE); a client
    /// that reads nothing for longer has its stream aborted, its slot and KV blocks freed.
    #[arg(long, default_value = "60", env = "GLIMPSE_STREAM_IDLE_TIMEOUT_SECS",
          value_parser = positive_secs())]
    stream_idle_timeout_secs: Duration,
    /// Concurrent gRPC streams one HTTP/2 connection may open.
    #[arg(long, default_value_t = 64, env = "GLIMPSE_MAX_CONCURRENT_STREAMS",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Seconds between HTTP/2 pings the gRPC server sends on each connection.
    #[arg(long, default_value = "30", env = "GLIMPSE_HTTP2_KEEPALIVE_INTERVAL_SECS",
          value_parser = positive_secs())]
    http2_keepalive_interval_secs: Duration,
    /// Seconds a gRPC connection has to answer a ping before it is closed (its streams aborted).
    #[arg(long, default_value = "20", env = "GLIMPSE_HTTP2_KEEPALIVE_TIMEOUT_SECS",
          value_parser = positive_secs())]
    http2_keepalive_timeout_secs: Duration,
    /// Seconds of silence before TCP keepalive probes start on a connection (every port).
    #[arg(long, default_value = "60", env = "GLIMPSE_TCP_KEEPALIVE_SECS",
          value_parser = positive_secs())]
    tcp_keepalive_secs: Duration,
    /// Connections each port (gRPC, HTTP, metrics) holds at once; more wait, unaccepted, in the
    /// kernel's listen backlog until one closes.
    #[arg(long, default_value_t = 1024, env = "GLIMPSE_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds an HTTP connection (API and metrics ports) has to send a request's header,
    /// counted from its start and from the end of each response: one that sends nothing, a
    /// partial header, or idles between requests for longer is closed.
    #[arg(long, default_value = "30", env = "GLIMPSE_HTTP_HEADER_READ_TIMEOUT_SECS",
          value_parser = positive_secs())]
    http_header_read_timeout_secs: Duration,
    /// PEM certificate chain: with `--tls-key-file`, every port speaks TLS only.
    #[arg(long, env = "GLIMPSE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "GLIMPSE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Seconds a client has to finish its TLS handshake; then the connection is closed.
    #[arg(long, default_value = "10", env = "GLIMPSE_TLS_HANDSHAKE_TIMEOUT_SECS",
          value_parser = positive_secs())]
    tls_handshake_timeout_secs: Duration,
    /// File holding the bearer token requests must send (`Authorization: Bearer <token>`) on
    /// gRPC, HTTP and, when not on loopback, metrics; health stays open.
    #[arg(long, env = "GLIMPSE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Port of the Prometheus `/metrics` endpoint (0 picks a free one and logs it).
    #[arg(long, default_value_t = 9400, env = "GLIMPSE_METRICS_PORT")]
    metrics_port: u16,
    /// Requests that may wait for a slot beyond `max_num_seqs` running ones; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024, env = "GLIMPSE_MAX_WAITING")]
    max_waiting: usize,
    /// Prompts tokenized, chat templates rendered and token ids decoded at once, on threads
    /// beside the async runtime (so a large prompt never stalls health probes or streams)
    /// [default: the number of CPUs].
    #[arg(long, env = "GLIMPSE_TOKENIZER_WORKERS")]
    tokenizer_workers: Option<NonZeroUsize>,
    /// Seconds running requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30, env = "GLIMPSE_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: u64,
    /// Name the model is served under (default: the hub id `ORG/NAME` of a hub model, else its
    /// folder name); also the `model_name` label of every metric.
    #[arg(long, env = "GLIMPSE_MODEL_NAME")]
    model_name: Option<String>,
    /// Seconds between engine summary log lines (running, waiting, KV usage, tokens/s), logged
    /// while there is work; 0 turns them off.
    #[arg(long, default_value_t = 10, env = "GLIMPSE_LOG_STATS_INTERVAL_SECS")]
    log_stats_interval_secs: u64,
}

/// The parser of every `--*-secs` timeout flag that must be positive: whole seconds, at least 1,
/// as the `Duration` the server uses (a zero timeout would close every connection at once).
fn positive_secs() -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64).range(1..).map(Duration::from_secs)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(net::load_tls(cert, key)?),
        _ => None,
    };
    let token = args
        .auth_token_file
        .as_deref()
        .map(BearerToken::load)
        .transpose()?;
    let connections = net::Settings {
        max_connections: args.max_connections as usize,
        tcp_keepalive: args.tcp_keepalive_secs,
        tls_handshake_timeout: args.tls_handshake_timeout_secs,
        tls,
    };
    let LoadedEngine {
        location,
        model,
        tokenizer,
        core,
        device_memory,
    } = args.engine.load()?;
    let geometry = *core.backend().geometry();
    let model_name = args.model_name.clone().unwrap_or(location.name);
    let device = args.engine.device.to_string();
    let kv_cache_dtype = geometry.dtype.to_string();
    let metrics_handle = metrics::install(&BuildInfo {
        model: &model_name,
        device: &device,
        block_size: geometry.block_size,
        kv_cache_dtype: &kv_cache_dtype,
        num_blocks: geometry.num_blocks,
        kv_cache_bytes: geometry.total_bytes(),
        max_model_len: model.config.max_model_len,
        device_memory,
    })
    .context("installing the metrics recorder")?;
    let metrics_listener =
        tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.metrics_port))
            .await
            .with_context(|| format!("binding metrics port {}:{}", args.host, args.metrics_port))?;
    let metrics_addr = metrics_listener.local_addr()?;
    metrics::serve(
        net::incoming(metrics_listener, "metrics", Protocol::Http1, &connections),
        metrics_handle,
        // Only off loopback: a scraper on the same machine (a sidecar, a local Prometheus)
        // needs no token there.
        token.clone().filter(|_| !args.host.is_loopback()),
        args.http_header_read_timeout_secs,
    );
    let eviction = core.validator().limits().eviction;
    let stats_log = StatsLog::every(Duration::from_secs(args.log_stats_interval_secs));
    let (engine, engine_thread) = engine_loop::spawn(core, (EngineMetrics, stats_log));
    let admission = Arc::new(Admission::new(args.engine.max_num_seqs + args.max_waiting));
    watch_engine(engine_thread, Arc::clone(&admission));
    // Both reflection versions: grpcurl <= 1.8 and Python's `grpcio-reflection` speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let model_info = v1::ModelInfo {
        model_name: model_name.clone(),
        model_path: model.dir.display().to_string(),
        architecture: format!("{:?}ForCausalLM", model.config.architecture),
        vocab_size: model.config.vocab_size as u32,
        max_model_len: model.config.max_model_len as u32,
        num_layers: model.config.num_layers as u32,
        num_kv_heads: model.config.num_kv_heads as u32,
        block_size: geometry.block_size as u32,
        num_kv_blocks: geometry.num_blocks as u32,
        kv_cache_bytes: geometry.total_bytes() as u64,
        default_policy: Some(policy_message(eviction.default_policy)),
        supported_policies: PolicyKind::ALL
            .into_iter()
            .filter(|&kind| eviction.supports(kind))
            .map(|kind| wire_policy(kind).into())
            .collect(),
        lookahead_loaded: eviction.lookahead_tokens.is_some(),
        lookahead_name: args
            .engine
            .lookahead_module
            .as_ref()
            .and_then(|path| path.file_stem())
            .map(|stem| stem.to_string_lossy().into_owned()),
        eos_token_ids: model.eos_token_ids(),
        dtype: model.dtype.to_string(),
        device,
        kv_cache_dtype,
    };
    let workers = match args.tokenizer_workers {
        Some(workers) => workers,
        None => std::thread::available_parallelism().context("counting CPUs")?,
    };
    let prompts = PromptWork::new(
        Arc::clone(&tokenizer),
        engine.validator().limits(),
        workers.get(),
    );
    let http_state = Arc::new(HttpState {
        engine: engine.clone(),
        prompts: prompts.clone(),
        admission: Arc::clone(&admission),
        model_name: model_name.clone(),
        max_model_len: model.config.max_model_len,
        started_unix_secs: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        max_body_bytes: args.http_max_body_bytes,
        stream_idle_timeout: args.stream_idle_timeout_secs,
    });
    let service = GenerationService {
        engine: engine.clone(),
        prompts,
        model_info,
        admission: Arc::clone(&admission),
        stream_idle_timeout: args.stream_idle_timeout_secs,
    };

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("binding gRPC port {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let check = TokenCheck(token.clone());
    let server = tokio::spawn(
        Server::builder()
            .max_concurrent_streams(args.max_concurrent_streams)
            .http2_keepalive_interval(Some(args.http2_keepalive_interval_secs))
            .http2_keepalive_timeout(Some(args.http2_keepalive_timeout_secs))
            .add_service(glimpse_server::health::service(Arc::clone(&admission)))
            .add_service(InterceptedService::new(reflection_v1, check.clone()))
            .add_service(InterceptedService::new(reflection_v1alpha, check.clone()))
            .add_service(InterceptedService::new(
                DecodeRefusals::new(
                    v1::generation_server::GenerationServer::new(service)
                        .max_decoding_message_size(args.max_message_bytes),
                    args.max_message_bytes,
                ),
                check,
            ))
            .serve_with_incoming_shutdown(
                net::incoming(listener, "gRPC", Protocol::Grpc, &connections),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_addr, http_server) = if args.http_port == 0 {
        ("off".to_string(), None)
    } else {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.http_port))
            .await
            .with_context(|| format!("binding HTTP port {}:{}", args.host, args.http_port))?;
        let addr = listener.local_addr()?.to_string();
        let stop = async {
            let _ = http_stop_rx.await;
        };
        let server = glimpse_server::http::serve(
            net::incoming(listener, "HTTP", Protocol::Http1, &connections),
            http_state,
            token.clone(),
            args.http_header_read_timeout_secs,
            stop,
        );
        (addr, Some(server))
    };
    tracing::info!(
        grpc = %addr,
        http = %http_addr,
        metrics = %metrics_addr,
        model = %model_name,
        tls = connections.tls.is_some(),
        auth = token.is_some(),
        "listening"
    );
    warn_if_exposed(args.host, connections.tls.is_some(), token.is_some());

    tokio::select! {
        warmed = warm_up(&engine, &tokenizer) => warmed.context("warm-up generation failed")?,
        () = signals.next() => {
            tracing::info!("shutdown signal during warm-up; exiting");
            return Ok(());
        }
        () = admission.engine_stopped() => bail!("the engine thread stopped during warm-up"),
    }
    admission.mark_warmed_up();
    tracing::info!("warm-up done; serving");

    tokio::select! {
        () = signals.next() => {}
        () = admission.engine_stopped() => bail!("the engine thread stopped unexpectedly"),
    }
    tracing::info!(
        in_flight = admission.in_flight(),
        "shutting down: draining running requests"
    );
    admission.start_draining();
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let in_time = tokio::select! {
        drained = tokio::time::timeout(grace, drained(&admission)) => drained.is_ok(),
        () = signals.next() => bail!("second shutdown signal while draining; exiting at once"),
    };
    if !in_time {
        tracing::warn!(
            in_flight = admission.in_flight(),
            "grace period over; ending remaining requests with finish reason abort"
        );
        engine.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), drained(&admission)).await;
    }
    let _ = stop_tx.send(());
    let _ = http_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(http_server) = http_server {
        let _ = tokio::time::timeout(Duration::from_secs(5), http_server).await;
    }
    drop(engine);
    tracing::info!("stopped");
    Ok(())
}

/// Marks the server stopped when the engine thread ends (a panic, a dead device) and completes
/// then: the caller exits non-zero so the orchestrator restarts the process.
fn watch_engine(thread: engine_loop::EngineThread, admission: Arc<Admission>) {
    tokio::spawn(async move {
        let _ = thread.stopped.await;
        admission.mark_engine_stopped();
    });
}

/// Warns when the ports are reachable from beyond this machine with neither TLS nor a token.
fn warn_if_exposed(host: IpAddr, tls: bool, auth: bool) {
    if !host.is_loopback() && !tls && !auth {
        tracing::warn!(
            %host,
            "listening on a non-loopback address without TLS (--tls-cert-file, --tls-key-file) \
             or authentication (--auth-token-file): anyone who reaches the gRPC, HTTP and \
             metrics ports can use them; keep them on a private network (docs/deploy.md, \
             Security)"
        );
    }
}

/// Completes once no request is in flight.
async fn drained(admission: &Admission) {
    while admission.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One short greedy generation through the whole engine before reporting SERVING, run unseen by
/// the step observers: metrics count only served requests.
async fn warm_up(
    engine: &engine_loop::EngineHandle,
    tokenizer: &glimpse_engine::tokenizer::Tokenizer,
) -> anyhow::Result<()> {
    let request = GenerationRequest {
        prompt_ids: tokenizer.encode("Hello", true)?,
        sampling: SamplingParams::greedy(),
        stop: StopConditions {
            max_tokens: 1,
            ignore_eos: true,
            ..StopConditions::default()
        },
        skip_special_tokens: true,
        kv_cache: None,
    };
    let request = engine.validator().validate(request)?;
    engine.warm_up(request).await?;
    Ok(())
}

/// SIGTERM and SIGINT, listened to from the start of `serve` (so a signal during loading or
/// warm-up is handled, not fatal): the first starts the drain, a second ends it at once.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
                interrupt: signal(SignalKind::interrupt())
                    .context("installing the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
