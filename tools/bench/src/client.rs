//! The gRPC side of the benchmark: builds `GenerateRequest`s, sends them to a running
//! `glimpse serve`, and times the streamed answer as the client sees it.
//!
//! A failed request is data, not an error: [`stream_to_end`] returns a [`Failure`]
//! carrying the gRPC status code, so one bad request never stops a run. The records and
//! outcomes defined here are shared with the `openai` backend; `backend` times both.

use std::time::{Duration, Instant};

use glimpse_proto::v1::{
    self, GenerateRequest, KvCachePolicy, KvPolicy, SamplingParameters, generate_request,
    generate_response, generation_client::GenerationClient,
};
use tonic::transport::Channel;

use super::dataset::{Prompt, PromptInput};

/// Responses carry whole tokenized corpora (long-context); tonic's 4 MiB default is low.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why talking to the server failed outside a benchmarked request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("{rpc} failed: {status}")]
    Rpc {
        rpc: &'static str,
        status: Box<tonic::Status>,
    },
}

/// A cheap-to-clone connection (tonic multiplexes calls over one HTTP/2 channel).
pub type Connection = GenerationClient<Channel>;

/// The URL to dial for `--endpoint`: as given when it names a scheme, else
/// `http://` + `host:port` (the form `glimpse serve` logs and grpcurl takes).
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// Connects to `endpoint` (`http://host:port`).
pub async fn connect(endpoint: &str) -> Result<Connection, ClientError> {
    let client = GenerationClient::connect(endpoint.to_owned())
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The server's `ModelInfo`.
pub async fn model_info(client: &mut Connection) -> Result<v1::ModelInfo, ClientError> {
    let rpc = "GetModelInfo";
    let response = client
        .get_model_info(v1::GetModelInfoRequest {})
        .await
        .map_err(|status| ClientError::Rpc {
            rpc,
            status: Box::new(status),
        })?;
    Ok(response.into_inner())
}

/// Token ids of `text` under the server's tokenizer.
pub async fn tokenize(
    client: &mut Connection,
    text: &str,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ClientError> {
    let rpc = "Tokenize";
    let request = v1::TokenizeRequest {
        input: Some(v1::tokenize_request::Input::Text(text.to_owned())),
        add_special_tokens: Some(add_special_tokens),
        return_token_strings: false,
    };
    let response = client
        .tokenize(request)
        .await
        .map_err(|status| ClientError::Rpc {
            rpc,
            status: Box::new(status),
        })?;
    Ok(response.into_inner().token_ids)
}

/// What every request of one policy run shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestSettings {
    /// `None` leaves the server default.
    pub temperature: Option<f32>,
    /// Per-request seed base; request `i` gets `seed + i`, so sampled runs repeat.
    pub seed: u64,
    pub ignore_eos: bool,
    pub policy: KvPolicy,
    pub budget: Option<u32>,
}

/// The request for prompt number `index`.
pub fn build_request(prompt: &Prompt, index: usize, settings: &RequestSettings) -> GenerateRequest {
    let input = match &prompt.input {
        PromptInput::Text(text) => generate_request::Input::Text(text.clone()),
        PromptInput::TokenIds(ids) => {
            generate_request::Input::TokenIds(v1::TokenIds { ids: ids.clone() })
        }
    };
    GenerateRequest {
        request_id: Some(format!("bench-{index}")),
        input: Some(input),
        sampling: Some(SamplingParameters {
            temperature: settings.temperature,
            seed: Some(settings.seed.wrapping_add(index as u64)),
            ..Default::default()
        }),
        max_tokens: Some(prompt.max_tokens),
        ignore_eos: settings.ignore_eos,
        kv_cache: Some(KvCachePolicy {
            policy: settings.policy.into(),
            budget: settings.budget,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A request that streamed to its end (gRPC's `Final`, OpenAI's `[DONE]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// From sending to the first chunk with a token (to the end if none came).
    pub ttft_secs: f64,
    /// Gaps between consecutive token-bearing chunks.
    pub itl_secs: Vec<f64>,
    pub e2e_secs: f64,
    /// Tokens generated, as the server counted them.
    pub output_tokens: u32,
    /// The generated ids when the server sent them (always on gRPC; on OpenAI only with
    /// `return_token_ids`); see [`Completion::ids`].
    pub output_ids: Vec<u32>,
    pub text: String,
    pub prompt_tokens: u32,
    /// gRPC's `FinishReason` name (`FINISH_REASON_LENGTH`) or OpenAI's (`length`).
    pub finish_reason: String,
    pub kv_entries_kept: u32,
    pub kv_blocks_freed: u32,
}

impl Completion {
    /// Every generated id, or `None` when the server sent fewer ids than tokens (an
    /// OpenAI server streaming text only), so agreement is never judged on a part.
    pub fn ids(&self) -> Option<&[u32]> {
        (self.output_ids.len() == self.output_tokens as usize).then_some(&self.output_ids)
    }
}

/// A request that did not complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// gRPC status code name (`ResourceExhausted`), `HTTP 400 Bad Request` on OpenAI, or
    /// `Incomplete` for a stream that ended early.
    pub code: String,
    pub message: String,
}

/// One request's timing and result; times are seconds since the run started.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub index: usize,
    pub start_secs: f64,
    pub end_secs: f64,
    pub outcome: Result<Completion, Failure>,
}

fn failure(status: tonic::Status) -> Failure {
    Failure {
        code: format!("{:?}", status.code()),
        message: status.message().to_owned(),
    }
}

/// Sends `request` and follows its stream to the `Final` message; `sent` anchors the
/// times. Never fails: errors become a [`Failure`] outcome.
pub async fn stream_to_end(
    client: &mut Connection,
    request: GenerateRequest,
    sent: Instant,
) -> Result<Completion, Failure> {
    let mut stream = client
        .generate(request)
        .await
        .map_err(failure)?
        .into_inner();
    let mut first_token: Option<Duration> = None;
    let mut last_token = Duration::ZERO;
    let mut itl_secs = Vec::new();
    let mut output_ids = Vec::new();
    let mut text = String::new();
    while let Some(message) = stream.message().await.map_err(failure)? {
        let now = sent.elapsed();
        match message.kind {
            Some(generate_response::Kind::Chunk(chunk)) => {
                if !chunk.token_ids.is_empty() {
                    match first_token {
                        None => first_token = Some(now),
                        Some(_) => itl_secs.push((now - last_token).as_secs_f64()),
                    }
                    last_token = now;
                }
                output_ids.extend(chunk.token_ids);
                text.push_str(&chunk.text);
            }
            Some(generate_response::Kind::Final(last)) => {
                let usage = last.usage.unwrap_or_default();
                return Ok(Completion {
                    ttft_secs: first_token.unwrap_or(now).as_secs_f64(),
                    itl_secs,
                    e2e_secs: now.as_secs_f64(),
                    output_tokens: u32::try_from(output_ids.len()).unwrap_or(u32::MAX),
                    output_ids,
                    text,
                    prompt_tokens: usage.prompt_tokens,
                    finish_reason: last.finish_reason().as_str_name().to_owned(),
                    kv_entries_kept: usage.kv_entries_kept,
                    kv_blocks_freed: usage.kv_blocks_freed,
                });
            }
            None => {}
        }
    }
    Err(Failure {
        code: "Incomplete".into(),
        message: "stream ended without a Final message".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_are_plain_http() {
        assert_eq!(endpoint_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(endpoint_url("localhost:1"), "http://localhost:1");
        assert_eq!(endpoint_url("http://h:2"), "http://h:2");
        assert_eq!(endpoint_url("https://h:3"), "https://h:3");
    }

    #[test]
    fn requests_carry_the_policy_budget_and_a_per_request_seed() {
        let prompt = Prompt {
            input: PromptInput::TokenIds(vec![5, 6]),
            max_tokens: 7,
            answer: None,
        };
        let settings = RequestSettings {
            temperature: Some(0.0),
            seed: 10,
            ignore_eos: true,
            policy: KvPolicy::Snapkv,
            budget: Some(128),
        };
        let request = build_request(&prompt, 3, &settings);
        assert_eq!(request.request_id.as_deref(), Some("bench-3"));
        assert_eq!(request.max_tokens, Some(7));
        assert!(request.ignore_eos);
        let sampling = request.sampling.unwrap();
        assert_eq!((sampling.temperature, sampling.seed), (Some(0.0), Some(13)));
        let kv = request.kv_cache.unwrap();
        assert_eq!((kv.policy(), kv.budget), (KvPolicy::Snapkv, Some(128)));
        assert_eq!(
            request.input,
            Some(generate_request::Input::TokenIds(v1::TokenIds {
                ids: vec![5, 6]
            }))
        );
    }
}
