//! The `n` choices of one request, each its own engine sequence of the same prompt: admitted
//! one slot each, validated by the one validator, submitted together and read as one stream of
//! `(choice index, event)`. With a seed, choice `i` samples with `seed + i`, so the choices differ
//! but reproduce. The prompt's KV blocks are not shared between choices (the block allocator has
//! no sharing): `n` choices prefill and hold the prompt `n` times. Dropping [`Choices`] drops
//! every event receiver, which aborts the sequences and frees their blocks at the next step.

use std::sync::Arc;
use std::time::Instant;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::admission::{Admission, AdmissionGuard};
use crate::engine_loop::{EngineHandle, FinishedEvent, StreamEvent, TokenEvent};
use crate::error::RequestError;
use crate::validation::RawRequest;

/// Running choices and their admission slots.
pub struct Choices {
    events: tokio_stream::StreamMap<usize, UnboundedReceiverStream<StreamEvent>>,
    n: usize,
    _slots: Vec<AdmissionGuard>,
}

/// One choice's whole output.
#[derive(Debug, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<TokenEvent>,
    pub finished: Option<FinishedEvent>,
}

impl Choices {
    /// Admits and submits `n` sequences of `raw`; `first_slot` (taken before the prompt was
    /// tokenized) is the first choice's. Fails when admission refuses a slot (the slots taken are
    /// given back) or the validator refuses the request.
    pub fn submit(
        engine: &EngineHandle,
        admission: &Arc<Admission>,
        first_slot: AdmissionGuard,
        raw: &RawRequest,
        n: usize,
        arrival: Instant,
    ) -> Result<Self, RequestError> {
        let slots = std::iter::once(Ok(first_slot))
            .chain((1..n).map(|_| admission.try_admit()))
            .collect::<Result<Vec<_>, _>>()?;
        let requests = (0..n)
            .map(|i| {
                let mut raw = raw.clone();
                raw.sampling.seed = raw.sampling.seed.map(|s| s.wrapping_add(i as u64));
                engine.validator().validate_raw(raw)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut events = tokio_stream::StreamMap::with_capacity(n);
        for (i, request) in requests.into_iter().enumerate() {
            let receiver = engine.submit_at(request, arrival);
            events.insert(i, UnboundedReceiverStream::new(receiver));
        }
        Ok(Self {
            events,
            n,
            _slots: slots,
        })
    }

    /// How many choices there are.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The next event of any choice; `None` once every choice's stream ended.
    pub async fn next(&mut self) -> Option<(usize, StreamEvent)> {
        self.events.next().await
    }

    /// Every choice to its end; the first error of any choice fails the request (and drops the
    /// others, aborting them).
    pub async fn collect(mut self) -> Result<Vec<ChoiceOutput>, RequestError> {
        let mut outputs: Vec<ChoiceOutput> = (0..self.n).map(|_| ChoiceOutput::default()).collect();
        while let Some((i, event)) = self.next().await {
            let output = &mut outputs[i];
            match event {
                StreamEvent::Token(token) => {
                    output.text.push_str(&token.text_delta);
                    output.tokens.push(token);
                }
                StreamEvent::Finished(finished) => {
                    output.text.push_str(&finished.text_delta);
                    output.finished = Some(finished);
                }
                StreamEvent::Error(error) => return Err(error),
            }
        }
        if outputs.iter().any(|o| o.finished.is_none()) {
            return Err(RequestError::Dropped);
        }
        Ok(outputs)
    }
}
