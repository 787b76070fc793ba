//! Helpers shared by the engine-loop integration tests.

use std::time::Instant;

use glimpse_server::engine_loop::{EngineCore, EventSink, GenerationRequest, RequestError};

/// Validates `request` with the engine's validator, then queues it (what a handler does).
pub fn add(
    core: &mut EngineCore,
    request: GenerationRequest,
    events: EventSink,
) -> Result<(), RequestError> {
    let request = core.validator().validate(request)?;
    core.add_request(request, events, Instant::now()).map(drop)
}
