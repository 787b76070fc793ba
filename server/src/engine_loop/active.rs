//! Per-request state the engine loop keeps while a request runs: its tokens, sampler, detokenizer,
//! stop matcher, event channel and timestamps.

use std::sync::Arc;
use std::time::Instant;

use glimpse_engine::batch::Compaction;
use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::sampling::{SampledToken, Sampler};
use glimpse_engine::tokenizer::{IncrementalDetokenizer, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use super::request::{FinishReason, FinishedEvent, StreamEvent, Timings, TokenEvent, Usage};
use super::stop::{Matched, StopStringMatcher};
use crate::error::RequestError;
use crate::validation::{StopConditions, ValidRequest};

/// Where a request's events go; a closed channel means the client left.
pub type EventSink = UnboundedSender<StreamEvent>;

/// Instants in a request's life, stamped by the loop.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimes {
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
}

/// A running request.
pub struct ActiveRequest {
    /// Prompt followed by every generated token; position `p` holds token `tokens[p]`.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub stop: StopConditions,
    pub sampler: Sampler,
    detokenizer: IncrementalDetokenizer,
    stop_strings: StopStringMatcher,
    events: EventSink,
    pub times: RequestTimes,
    pub usage: Usage,
    /// The request's KV eviction policy, resolved against the engine default.
    pub policy: EvictionPolicy,
    /// After a per-layer-budget eviction (PyramidKV): what decode attention must respect.
    pub compacted: Option<Compaction>,
    /// Time spent scoring, selecting and compacting this request's cache.
    pub eviction_time: std::time::Duration,
    /// The span current when the request was added (the submitting handler's, which carries its
    /// `request_id`): the engine thread writes the request's log lines in it.
    pub span: tracing::Span,
}

/// What sampling one token did to a request.
pub enum TokenOutcome {
    Continue,
    Finished(FinishReason),
    /// The token's text could not be decoded: the request must end with this error (nothing was
    /// streamed for the token).
    Failed(RequestError),
}

impl ActiveRequest {
    pub fn new(
        request: ValidRequest,
        vocab_size: usize,
        tokenizer: Arc<Tokenizer>,
        events: EventSink,
        arrival: Instant,
    ) -> Result<Self, RequestError> {
        let internal = |e: glimpse_engine::EngineError| RequestError::Internal {
            message: e.to_string(),
        };
        let sampler =
            Sampler::new(request.sampling, &request.prompt_ids, vocab_size).map_err(internal)?;
        let detokenizer = IncrementalDetokenizer::with_context(
            tokenizer,
            &request.prompt_ids,
            request.skip_special_tokens,
        )
        .map_err(internal)?;
        let prompt_len = request.prompt_ids.len();
        Ok(Self {
            stop_strings: StopStringMatcher::new(&request.stop.stop_strings),
            tokens: request.prompt_ids,
            prompt_len,
            stop: request.stop,
            sampler,
            detokenizer,
            events,
            times: RequestTimes {
                arrival,
                first_scheduled: None,
                first_token: None,
                last_token: None,
            },
            usage: Usage {
                prompt_tokens: prompt_len,
                kv_entries_kept: prompt_len,
                ..Usage::default()
            },
            policy: request.policy,
            compacted: None,
            eviction_time: std::time::Duration::ZERO,
            span: tracing::Span::current(),
        })
    }

    /// Number of tokens generated so far.
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the client is gone (its stream was dropped).
    pub fn is_disconnected(&self) -> bool {
        self.events.is_closed()
    }

    /// Whether the next sampled token may end the request (`min_tokens` reached with it); until
    /// then the loop masks stop tokens out of the logits, as vLLM does.
    pub fn next_token_may_stop(&self) -> bool {
        self.num_generated() + 1 >= self.stop.min_tokens
    }

    /// Records a sampled token, streams its text and applies the stop rules.
    pub fn accept(&mut self, sampled: SampledToken, eos_ids: &[u32], now: Instant) -> TokenOutcome {
        let token = sampled.token_id;
        self.tokens.push(token);
        self.usage.completion_tokens += 1;
        self.times.first_token.get_or_insert(now);
        self.times.last_token = Some(now);
        let may_stop = self.num_generated() >= self.stop.min_tokens;
        let pushed = self.detokenizer.push(token).map(Option::unwrap_or_default);
        let delta = match decoded(&self.span, pushed) {
            Ok(text) => text,
            Err(error) => return TokenOutcome::Failed(error),
        };
        let (text_delta, stop_string) = match self.stop_strings.push(&delta) {
            Matched::Release(text) => (text, None),
            Matched::Stop { text, stop } if may_stop => (text, Some(stop)),
            Matched::Stop { text, stop } => (text + &stop, None),
        };
        self.send(StreamEvent::Token(TokenEvent {
            token_id: token,
            text_delta,
            logprob: sampled.logprob,
            top_logprobs: sampled.top_logprobs,
        }));
        if let Some(stop) = stop_string {
            return TokenOutcome::Finished(FinishReason::StopString(stop));
        }
        let is_stop_token = (!self.stop.ignore_eos && eos_ids.contains(&token))
            || self.stop.stop_token_ids.contains(&token);
        if may_stop && is_stop_token {
            return TokenOutcome::Finished(FinishReason::Stop);
        }
        if self.num_generated() >= self.stop.max_tokens {
            return TokenOutcome::Finished(FinishReason::Length);
        }
        TokenOutcome::Continue
    }

    /// Sends the final event with whatever text was held back, and returns the usage and timings.
    /// When the held-back text cannot be decoded the stream ends with that error instead, and
    /// `None` comes back: the request failed.
    pub fn finish(mut self, reason: FinishReason, now: Instant) -> Option<(Usage, Timings)> {
        let mut text_delta = String::new();
        if !matches!(reason, FinishReason::StopString(_)) {
            let rest = match decoded(&self.span, self.detokenizer.finish()) {
                Ok(rest) => rest,
                Err(error) => {
                    self.fail(error);
                    return None;
                }
            };
            let (Matched::Release(t) | Matched::Stop { text: t, .. }) =
                self.stop_strings.push(&rest);
            text_delta.push_str(&t);
            text_delta.push_str(&self.stop_strings.flush());
        }
        let times = self.times;
        let first_scheduled = times.first_scheduled.unwrap_or(now);
        let first_token = times.first_token.unwrap_or(now);
        let timings = Timings {
            queue: first_scheduled - times.arrival,
            prefill: first_token.saturating_duration_since(first_scheduled),
            eviction: self.eviction_time,
            time_to_first_token: first_token - times.arrival,
            total: now - times.arrival,
        };
        let usage = self.usage;
        self.send(StreamEvent::Finished(FinishedEvent {
            reason,
            text_delta,
            usage,
            timings,
            policy: self.policy,
        }));
        Some((usage, timings))
    }

    /// Sends an error as the final event.
    pub fn fail(self, error: RequestError) {
        self.send(StreamEvent::Error(error));
    }

    fn send(&self, event: StreamEvent) {
        // A closed channel is noticed by `is_disconnected` before the next step.
        let _ = self.events.send(event);
    }
}

/// Generated text, or the error that ends the request when the tokenizer cannot decode it: text
/// silently dropped would reach the client as a wrong answer, so the request fails as INTERNAL
/// (counted in `glimpse_request_errors_total`) instead. The warning is written in the request's
/// `span`.
fn decoded(
    span: &tracing::Span,
    text: glimpse_engine::Result<String>,
) -> Result<String, RequestError> {
    text.map_err(|e| {
        span.in_scope(|| tracing::warn!(error = %e, "detokenization failed; ending the request"));
        RequestError::Internal {
            message: format!("the generated tokens could not be decoded: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// No tokenizer of the bundled model fails to decode, so the failure is built by hand: this
    /// checks the conversion and that its warning names the request (the span a handler submits
    /// in, entered again on the engine thread); `grpc::status` tests that the wire counts it.
    #[test]
    fn a_decode_failure_becomes_an_internal_error_naming_the_cause_and_the_request() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let failure = glimpse_engine::EngineError::Tokenizer {
            message: "decoding failed: bad byte".into(),
        };
        let outcome = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "req-7");
            decoded(&span, Err(failure))
        });
        let Err(RequestError::Internal { message }) = outcome else {
            panic!("a decode failure must be an internal error");
        };
        assert!(message.contains("could not be decoded"), "{message}");
        assert!(message.contains("bad byte"), "{message}");
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("request_id=\"req-7\"") && log.contains("detokenization failed"),
            "{log}"
        );
        assert_eq!(
            decoded(&tracing::Span::none(), Ok("hi".into())),
            Ok("hi".to_string())
        );
    }
}
