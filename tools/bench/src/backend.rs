//! Which API a run loads (`--backend`): Glimpse's gRPC or any OpenAI-compatible HTTP
//! server. Both turn a prompt into the same [`RequestRecord`], so the runner, the
//! statistics and the report are one path whatever the wire.

use std::time::Instant;

use super::client::{self, Connection, RequestRecord, RequestSettings};
use super::dataset::{Prompt, PromptInput};
use super::openai::OpenAiClient;

/// A cheap-to-clone handle on the server under test.
#[derive(Debug, Clone)]
pub enum Backend {
    Grpc(Connection),
    OpenAi(OpenAiClient),
}

impl Backend {
    /// Sends prompt number `index` and follows its stream to the end. `run_start`
    /// anchors the record's times, which start once the request is built. Never fails:
    /// errors become the record's failure.
    pub async fn send(
        &self,
        prompt: &Prompt,
        index: usize,
        settings: &RequestSettings,
        run_start: Instant,
    ) -> RequestRecord {
        let (sent, outcome) = match self {
            Self::Grpc(connection) => {
                let request = client::build_request(prompt, index, settings);
                let sent = Instant::now();
                let outcome = client::stream_to_end(&mut connection.clone(), request, sent).await;
                (sent, outcome)
            }
            Self::OpenAi(openai) => {
                let body = serde_json::to_vec(&openai.body(prompt, index, settings))
                    .expect("a completion body always serializes");
                let prompt_ids = match &prompt.input {
                    PromptInput::TokenIds(ids) => Some(ids.len()),
                    PromptInput::Text(_) => None,
                };
                let sent = Instant::now();
                let outcome = openai.stream_to_end(body, prompt_ids, sent).await;
                (sent, outcome)
            }
        };
        RequestRecord {
            index,
            start_secs: sent.duration_since(run_start).as_secs_f64(),
            end_secs: run_start.elapsed().as_secs_f64(),
            outcome,
        }
    }
}
