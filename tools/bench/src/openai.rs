//! The OpenAI-compatible HTTP side of the benchmark (`--backend openai`): builds
//! `POST /v1/completions` bodies, streams the Server-Sent Events answer, and times it as
//! the client sees it, so the same harness loads Glimpse's HTTP API, vLLM or llama.cpp.
//!
//! Prompts go out exactly as the gRPC backend sends them: token ids as `prompt: [ids]`
//! (which the completions API accepts), text as text, so both backends see identical
//! prompts. Extensions beyond OpenAI's API are sent only when the run uses them:
//! `ignore_eos` (vLLM's field), `kv_cache` for every policy but `full` and `default`
//! (Glimpse's field; other servers would reject or ignore it; against a Glimpse whose
//! `--kv-policy` is not `full`, the `full` column therefore runs that default), and
//! `return_token_ids` (vLLM's field) when generated ids are recorded or compared.
//!
//! The client is plain HTTP/1.1 on hyper, already in the tree for gRPC; no TLS is linked,
//! so `https://` endpoints are refused. A failed request is data, as on gRPC: its HTTP
//! status and OpenAI error message become the record's [`Failure`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use glimpse_proto::v1::KvPolicy;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::client::{Completion, Failure, RequestSettings};
use super::dataset::{Prompt, PromptInput};
use super::sse::SseDecoder;

/// Why the server could not be set up for a run (benchmarked requests never fail this way).
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("--endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("GET {url}: {message}")]
    Models { url: String, message: String },
    #[error("GET {url} lists no model; pass --model-name")]
    NoModel { url: String },
}

/// The served model as `GET /v1/models` describes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModelCard {
    pub id: String,
    /// Prompt plus output limit; vLLM and Glimpse report it, OpenAI and llama.cpp do not.
    #[serde(default)]
    pub max_model_len: Option<u32>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelCard>,
}

/// A cheap-to-clone client for one server and model.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port/v1`, no trailing slash.
    base_url: String,
    model: String,
    /// Ask for generated ids (`return_token_ids`), to record or compare them.
    return_token_ids: bool,
}

/// The API root for `--endpoint`: `http://` when no scheme is given, `/v1` appended
/// when absent. Fails on `https://` (no TLS is linked) and other schemes.
pub fn base_url(endpoint: &str) -> Result<String, OpenAiError> {
    let url = super::client::endpoint_url(endpoint);
    let refuse = |reason| OpenAiError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    if url.starts_with("https://") {
        return Err(refuse(
            "https is not supported (glimpse bench links no TLS); use http://",
        ));
    }
    if !url.starts_with("http://") {
        return Err(refuse("expected http://HOST:PORT[/v1] or HOST:PORT"));
    }
    let url = url.trim_end_matches('/');
    let base = if url.ends_with("/v1") {
        url.to_owned()
    } else {
        format!("{url}/v1")
    };
    base.parse::<hyper::Uri>()
        .map_err(|_| refuse("not a valid URL"))?;
    Ok(base)
}

/// Connects to `endpoint` and picks the model: `model_name`, else the first id that
/// `GET /v1/models` lists. Returns the client and that model's card (its
/// `max_model_len` when the server reports one). Fails when the list cannot be read.
pub async fn connect(
    endpoint: &str,
    model_name: Option<&str>,
    return_token_ids: bool,
) -> Result<(OpenAiClient, ModelCard), OpenAiError> {
    let base_url = base_url(endpoint)?;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{base_url}/models");
    let models_error = |message: String| OpenAiError::Models {
        url: url.clone(),
        message,
    };
    let request = Request::get(&url)
        .body(Full::default())
        .expect("a parsed URL builds a request");
    let response = http
        .request(request)
        .await
        .map_err(|e| models_error(e.to_string()))?;
    let status = response.status();
    let body = read_body(response)
        .await
        .map_err(|e| models_error(e.to_string()))?;
    if !status.is_success() {
        return Err(models_error(format!(
            "HTTP {status}: {}",
            error_message(&body)
        )));
    }
    let list: ModelList = serde_json::from_slice(&body)
        .map_err(|e| models_error(format!("not a model list: {e}")))?;
    let card = match model_name {
        Some(name) => list
            .data
            .into_iter()
            .find(|card| card.id == name)
            .unwrap_or_else(|| ModelCard {
                id: name.to_owned(),
                max_model_len: None,
            }),
        None => list
            .data
            .into_iter()
            .next()
            .ok_or(OpenAiError::NoModel { url: url.clone() })?,
    };
    let client = OpenAiClient {
        http,
        base_url,
        model: card.id.clone(),
        return_token_ids,
    };
    Ok((client, card))
}

async fn read_body(response: Response<Incoming>) -> Result<Bytes, hyper::Error> {
    Ok(response.into_body().collect().await?.to_bytes())
}

/// The message of an OpenAI error body (`{"error": {"message"}}`), else the body itself
/// (`(empty body)` when there is none).
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error.message,
        Err(_) if body.trim_ascii().is_empty() => "(empty body)".to_owned(),
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// `POST /v1/completions`, streamed.
#[derive(Debug, Serialize)]
pub struct CompletionBody<'a> {
    pub model: &'a str,
    pub prompt: PromptBody<'a>,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    pub seed: u64,
    pub stream: bool,
    pub stream_options: StreamOptions,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub return_token_ids: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCacheBody>,
}

/// Text, or token ids used as they are.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PromptBody<'a> {
    Text(&'a str),
    TokenIds(&'a [u32]),
}

#[derive(Debug, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// Glimpse's `kv_cache` extra field: gRPC's `KvPolicy` names in lower snake case.
#[derive(Debug, PartialEq, Serialize)]
pub struct KvCacheBody {
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
}

/// `kv_cache` for `policy`; `None` for `full` and the server default, so servers without
/// Glimpse's extension take the request.
fn kv_cache(policy: KvPolicy, budget: Option<u32>) -> Option<KvCacheBody> {
    if matches!(policy, KvPolicy::Unspecified | KvPolicy::Full) {
        return None;
    }
    let name = policy.as_str_name();
    let name = name.strip_prefix("KV_POLICY_").unwrap_or(name);
    Some(KvCacheBody {
        policy: name.to_lowercase(),
        budget,
    })
}

impl OpenAiClient {
    /// The body for prompt number `index`, with the same per-request seed as gRPC.
    pub fn body<'a>(
        &'a self,
        prompt: &'a Prompt,
        index: usize,
        settings: &RequestSettings,
    ) -> CompletionBody<'a> {
        CompletionBody {
            model: &self.model,
            prompt: match &prompt.input {
                PromptInput::Text(text) => PromptBody::Text(text),
                PromptInput::TokenIds(ids) => PromptBody::TokenIds(ids),
            },
            max_tokens: prompt.max_tokens,
            temperature: settings.temperature,
            seed: settings.seed.wrapping_add(index as u64),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            ignore_eos: settings.ignore_eos,
            return_token_ids: self.return_token_ids,
            kv_cache: kv_cache(settings.policy, settings.budget),
        }
    }

    /// Sends `body` and follows the stream to `[DONE]`; `prompt_ids` is the prompt's
    /// length when sent as ids. `sent` anchors the times. Never fails: errors become a
    /// [`Failure`] outcome. No request id header is sent: servers disagree on its form
    /// (llama.cpp's Python server refuses all but UUIDs with a bare 400).
    pub async fn stream_to_end(
        &self,
        body: Vec<u8>,
        prompt_ids: Option<usize>,
        sent: Instant,
    ) -> Result<Completion, Failure> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/completions", self.base_url))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a parsed URL builds a request");
        let response = self.http.request(request).await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = read_body(response).await.map_err(transport)?;
            return Err(Failure {
                code: format!("HTTP {status}"),
                message: error_message(&body),
            });
        }
        let mut body = response.into_body();
        let mut decoder = SseDecoder::default();
        let mut stream = StreamState::default();
        while let Some(frame) = body.frame().await {
            let Ok(bytes) = frame.map_err(transport)?.into_data() else {
                continue;
            };
            for data in decoder.push(&bytes) {
                if data == "[DONE]" {
                    return Ok(stream.finish(sent.elapsed(), prompt_ids));
                }
                stream.chunk(&data, sent.elapsed())?;
            }
        }
        Err(Failure {
            code: "Incomplete".into(),
            message: "stream ended without data: [DONE]".into(),
        })
    }
}

fn transport(error: impl std::fmt::Display) -> Failure {
    Failure {
        code: "Transport".into(),
        message: error.to_string(),
    }
}

/// One `data:` object of the stream.
#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<ChoiceChunk>,
    usage: Option<Usage>,
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ChoiceChunk {
    #[serde(default)]
    text: String,
    finish_reason: Option<String>,
    token_ids: Option<Vec<u32>>,
}

/// `usage`, with Glimpse's `kv_cache` extension when the server sends it (other servers do not).
#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    #[serde(default)]
    kv_cache: KvUsage,
}

/// Glimpse's `usage.kv_cache`: what the request's KV policy kept and freed.
#[derive(Default, Deserialize)]
struct KvUsage {
    #[serde(default)]
    entries_kept: Option<u32>,
    #[serde(default)]
    blocks_freed: u32,
}

/// What a stream has delivered so far; times are since the request was sent.
#[derive(Default)]
struct StreamState {
    first_token: Option<Duration>,
    last_token: Duration,
    itl_secs: Vec<f64>,
    token_chunks: u32,
    output_ids: Vec<u32>,
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl StreamState {
    /// Takes one chunk that arrived at `now`; a chunk that is not JSON, or an error
    /// object sent mid-stream (as vLLM does), fails the request.
    fn chunk(&mut self, data: &str, now: Duration) -> Result<(), Failure> {
        let chunk: StreamChunk = serde_json::from_str(data).map_err(|e| Failure {
            code: "BadChunk".into(),
            message: format!("{e}: {data}"),
        })?;
        if let Some(error) = chunk.error {
            return Err(Failure {
                code: "StreamError".into(),
                message: error.message,
            });
        }
        for choice in chunk.choices {
            let ids = choice.token_ids.unwrap_or_default();
            if !choice.text.is_empty() || !ids.is_empty() {
                match self.first_token {
                    None => self.first_token = Some(now),
                    Some(_) => self.itl_secs.push((now - self.last_token).as_secs_f64()),
                }
                self.last_token = now;
                self.token_chunks += 1;
            }
            self.output_ids.extend(ids);
            self.text.push_str(&choice.text);
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        Ok(())
    }

    /// The completion at `[DONE]`, received at `now`. Output tokens come from `usage`,
    /// else the ids received, else the text-bearing chunks (one token each, as servers
    /// stream them); prompt tokens from `usage`, else `prompt_ids` (0 for text prompts).
    fn finish(self, now: Duration, prompt_ids: Option<usize>) -> Completion {
        let counted = if self.output_ids.is_empty() {
            self.token_chunks
        } else {
            u32::try_from(self.output_ids.len()).unwrap_or(u32::MAX)
        };
        let prompt_ids = prompt_ids.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
        Completion {
            ttft_secs: self.first_token.unwrap_or(now).as_secs_f64(),
            itl_secs: self.itl_secs,
            e2e_secs: now.as_secs_f64(),
            output_tokens: self.usage.as_ref().map_or(counted, |u| u.completion_tokens),
            output_ids: self.output_ids,
            text: self.text,
            prompt_tokens: self.usage.as_ref().map_or(prompt_ids, |u| u.prompt_tokens),
            finish_reason: self.finish_reason.unwrap_or_default(),
            kv_entries_kept: self
                .usage
                .as_ref()
                .and_then(|u| u.kv_cache.entries_kept)
                .unwrap_or(0),
            kv_blocks_freed: self.usage.as_ref().map_or(0, |u| u.kv_cache.blocks_freed),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn client(return_token_ids: bool) -> OpenAiClient {
        OpenAiClient {
            http: Client::builder(TokioExecutor::new()).build_http(),
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            return_token_ids,
        }
    }

    fn settings(policy: KvPolicy, budget: Option<u32>) -> RequestSettings {
        RequestSettings {
            temperature: Some(0.0),
            seed: 10,
            ignore_eos: true,
            policy,
            budget,
        }
    }

    fn body_json(
        client: &OpenAiClient,
        prompt: &Prompt,
        settings: &RequestSettings,
    ) -> serde_json::Value {
        serde_json::to_value(client.body(prompt, 3, settings)).expect("bodies serialize")
    }

    #[test]
    fn endpoints_gain_a_scheme_and_v1_but_https_is_refused() {
        assert_eq!(
            base_url("127.0.0.1:8000").unwrap(),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(base_url("http://h:1/").unwrap(), "http://h:1/v1");
        assert_eq!(base_url("http://h:1/v1/").unwrap(), "http://h:1/v1");
        let err = base_url("https://api.example:443").unwrap_err().to_string();
        assert!(err.contains("https is not supported"), "{err}");
        assert!(base_url("ftp://h:1").is_err());
    }

    #[test]
    fn token_id_prompts_are_sent_as_ids_with_the_policy_in_kv_cache() {
        let prompt = Prompt {
            input: PromptInput::TokenIds(vec![5, 6]),
            max_tokens: 7,
            answer: None,
        };
        let body = body_json(
            &client(false),
            &prompt,
            &settings(KvPolicy::StreamingLlm, Some(64)),
        );
        assert_eq!(
            body,
            json!({
                "model": "m",
                "prompt": [5, 6],
                "max_tokens": 7,
                "temperature": 0.0,
                "seed": 13,
                "stream": true,
                "stream_options": {"include_usage": true},
                "ignore_eos": true,
                "kv_cache": {"policy": "streaming_llm", "budget": 64},
            })
        );
    }

    #[test]
    fn full_and_default_policies_send_no_extension_fields() {
        let prompt = Prompt {
            input: PromptInput::Text("Once".into()),
            max_tokens: 4,
            answer: None,
        };
        let mut plain = settings(KvPolicy::Full, None);
        plain.ignore_eos = false;
        plain.temperature = None;
        for policy in [KvPolicy::Full, KvPolicy::Unspecified] {
            plain.policy = policy;
            let body = body_json(&client(false), &prompt, &plain);
            let keys: Vec<&str> = body
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                [
                    "max_tokens",
                    "model",
                    "prompt",
                    "seed",
                    "stream",
                    "stream_options"
                ]
            );
            assert_eq!(body["prompt"], "Once");
        }
        let body = body_json(&client(true), &prompt, &plain);
        assert_eq!(body["return_token_ids"], true);
        assert_eq!(
            kv_cache(KvPolicy::Snapkv, None),
            Some(KvCacheBody {
                policy: "snapkv".into(),
                budget: None
            })
        );
    }

    #[test]
    fn openai_error_bodies_give_their_message_and_others_their_text() {
        let body =
            br#"{"error": {"message": "max_tokens: 600 > 512", "type": "invalid_request_error"}}"#;
        assert_eq!(error_message(body), "max_tokens: 600 > 512");
        assert_eq!(
            error_message(b"Internal Server Error\n"),
            "Internal Server Error"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_stream_times_text_chunks_and_takes_tokens_from_usage() {
        let mut state = StreamState::default();
        let chunks = [
            (r#"{"choices":[{"text":"","finish_reason":null}]}"#, 5),
            (r#"{"choices":[{"text":"Once","finish_reason":null}]}"#, 10),
            (r#"{"choices":[{"text":" upon","finish_reason":null}]}"#, 25),
            (
                r#"{"choices":[{"text":" a","finish_reason":"length"}],"usage":null}"#,
                45,
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3,"kv_cache":{"policy":"snapkv","budget":8,"entries_kept":8,"blocks_freed":2}}}"#,
                46,
            ),
        ];
        for (data, at) in chunks {
            state.chunk(data, ms(at)).expect("well-formed chunk");
        }
        let done = state.finish(ms(50), Some(9));
        assert_eq!(done.ttft_secs, 0.010);
        assert_eq!(done.itl_secs, [0.015, 0.020]);
        assert_eq!(done.e2e_secs, 0.050);
        assert_eq!((done.output_tokens, done.prompt_tokens), (3, 4));
        assert_eq!(
            (done.text.as_str(), done.finish_reason.as_str()),
            ("Once upon a", "length")
        );
        assert_eq!((done.kv_entries_kept, done.kv_blocks_freed), (8, 2));
        assert!(done.output_ids.is_empty());
    }

    #[test]
    fn without_usage_tokens_are_counted_from_ids_or_chunks() {
        let mut state = StreamState::default();
        state
            .chunk(r#"{"choices":[{"text":"a","finish_reason":null}]}"#, ms(1))
            .unwrap();
        state
            .chunk(
                r#"{"choices":[{"text":"b","finish_reason":"stop"}]}"#,
                ms(2),
            )
            .unwrap();
        let done = state.finish(ms(3), Some(5));
        assert_eq!((done.output_tokens, done.prompt_tokens), (2, 5));

        let mut state = StreamState::default();
        state
            .chunk(r#"{"choices":[{"text":"ab","token_ids":[7,8]}]}"#, ms(1))
            .unwrap();
        let done = state.finish(ms(2), None);
        assert_eq!((done.output_tokens, done.prompt_tokens), (2, 0));
        assert_eq!(done.output_ids, [7, 8]);
    }

    #[test]
    fn error_objects_and_garbage_in_the_stream_fail_the_request() {
        let mut state = StreamState::default();
        let err = state
            .chunk(r#"{"error":{"message":"engine died"}}"#, ms(1))
            .unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.message.as_str()),
            ("StreamError", "engine died")
        );
        let err = state.chunk("not json", ms(2)).unwrap_err();
        assert_eq!(err.code, "BadChunk");
    }
}
