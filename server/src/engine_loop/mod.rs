//! The engine loop: one OS thread owns the model, the KV pool and the scheduler ([`EngineCore`]);
//! everything else talks to it through an [`EngineHandle`] (STYLE rule 9). Handlers validate with
//! the engine's [`Validator`], then submit the [`ValidRequest`] with its own event channel; the loop drains new submissions with `try_recv`
//! every step and sleeps in `blocking_recv` when idle. A stream whose receiver is dropped is
//! aborted at the next step and its blocks freed.

mod active;
mod core;
mod request;
mod stop;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender, error::TryRecvError};
use tokio::sync::oneshot;

pub use self::active::EventSink;
pub use self::core::{BatchLimits, CompletedRequest, EngineCore, EvictionReport, StepReport};
pub use self::request::{FinishReason, FinishedEvent, StreamEvent, Timings, TokenEvent, Usage};
pub use crate::error::RequestError;
pub use crate::validation::{
    EvictionSettings, GenerationRequest, InputLimits, RequestLimits, StopConditions, ValidRequest,
    Validator,
};

/// Something that wants to know what every step did (metrics, benchmarks).
pub trait StepObserver: Send {
    fn on_step(&mut self, core: &EngineCore, report: &StepReport);
}

impl StepObserver for () {
    fn on_step(&mut self, _: &EngineCore, _: &StepReport) {}
}

/// An observer that may be switched off (e.g. a log whose interval is 0).
impl<O: StepObserver> StepObserver for Option<O> {
    fn on_step(&mut self, core: &EngineCore, report: &StepReport) {
        if let Some(observer) = self {
            observer.on_step(core, report);
        }
    }
}

/// Two observers of the same steps, in order.
impl<A: StepObserver, B: StepObserver> StepObserver for (A, B) {
    fn on_step(&mut self, core: &EngineCore, report: &StepReport) {
        self.0.on_step(core, report);
        self.1.on_step(core, report);
    }
}

enum Command {
    Submit {
        request: ValidRequest,
        events: EventSink,
        arrival: Instant,
        /// The submitter's span (with the request's id), entered while the request is added.
        span: tracing::Span,
    },
    /// Run a request to its end without the observer seeing its steps.
    WarmUp {
        request: ValidRequest,
        done: oneshot::Sender<Result<(), RequestError>>,
    },
    /// End every request now with `Abort` (the shutdown grace period is over).
    AbortAll,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: UnboundedSender<Command>,
    validator: Arc<Validator>,
}

impl EngineHandle {
    /// Submits a request; its events arrive on the returned receiver, ending with `Finished` or
    /// `Error`. Dropping the receiver aborts the request. The engine thread writes the request's
    /// log lines in the span current at the call (a handler's carries the request's id).
    pub fn submit(&self, request: ValidRequest) -> UnboundedReceiver<StreamEvent> {
        self.submit_at(request, Instant::now())
    }

    /// Like [`EngineHandle::submit`], for a request that arrived at `arrival` (TTFT and queue time
    /// are measured from it, e.g. from gRPC receipt).
    pub fn submit_at(
        &self,
        request: ValidRequest,
        arrival: Instant,
    ) -> UnboundedReceiver<StreamEvent> {
        let (events, receiver) = mpsc::unbounded_channel();
        let command = Command::Submit {
            request,
            events: events.clone(),
            arrival,
            span: tracing::Span::current(),
        };
        if self.commands.send(command).is_err() {
            let _ = events.send(StreamEvent::Error(RequestError::ShuttingDown));
        }
        receiver
    }

    /// Runs `request` on the engine thread before anything submitted after it, unseen by the
    /// step observer (so metrics do not count it), and says how it ended: the warm-up generation.
    pub async fn warm_up(&self, request: ValidRequest) -> Result<(), RequestError> {
        let (done, outcome) = oneshot::channel();
        self.commands
            .send(Command::WarmUp { request, done })
            .map_err(|_| RequestError::ShuttingDown)?;
        outcome.await.unwrap_or(Err(RequestError::Dropped))
    }

    /// Ends every waiting and running request with a `Finished` event of reason `Abort`, freeing
    /// its blocks: what the shutdown does when its grace period is over.
    pub fn abort_all(&self) {
        let _ = self.commands.send(Command::AbortAll);
    }

    /// The engine's validator: requests are validated with it before they are submitted.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }
}

/// The running engine thread.
pub struct EngineThread {
    pub join: std::thread::JoinHandle<()>,
    /// Completes when the thread ends, however it ends (a panic included).
    pub stopped: oneshot::Receiver<()>,
}

/// Starts the engine thread. It runs until every handle is dropped and no request is left.
pub fn spawn(
    core: EngineCore,
    observer: impl StepObserver + 'static,
) -> (EngineHandle, EngineThread) {
    let (commands, receiver) = mpsc::unbounded_channel();
    let validator = Arc::new(core.validator().clone());
    let (alive, stopped) = oneshot::channel::<()>();
    let join = std::thread::Builder::new()
        .name("glimpse-engine".into())
        .spawn(move || {
            // Dropped when the loop returns or unwinds: `stopped` completes either way.
            let _alive = alive;
            run(core, receiver, observer);
        })
        .expect("the engine thread starts");
    (
        EngineHandle {
            commands,
            validator,
        },
        EngineThread { join, stopped },
    )
}

fn run(
    mut core: EngineCore,
    mut commands: UnboundedReceiver<Command>,
    mut observer: impl StepObserver,
) {
    let mut open = true;
    loop {
        if !core.has_work() {
            if !open {
                return;
            }
            match commands.blocking_recv() {
                Some(command) => accept(&mut core, command, &mut observer),
                None => return,
            }
        }
        while open {
            match commands.try_recv() {
                Ok(command) => accept(&mut core, command, &mut observer),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        let report = core.step();
        observer.on_step(&core, &report);
    }
}

fn accept(core: &mut EngineCore, command: Command, observer: &mut impl StepObserver) {
    match command {
        Command::Submit {
            request,
            events,
            arrival,
            span,
        } => {
            let _in_request = span.enter();
            if let Err(error) = core.add_request(request, events.clone(), arrival) {
                let _ = events.send(StreamEvent::Error(error));
            }
        }
        Command::WarmUp { request, done } => {
            let _ = done.send(core.run_unobserved(request));
        }
        Command::AbortAll => {
            let report = StepReport {
                completed: core.abort_all(Instant::now()),
                ..StepReport::default()
            };
            observer.on_step(core, &report);
        }
    }
}

/// Convenience for offline use: the whole text and the final event of a finished stream.
pub async fn collect(
    mut events: UnboundedReceiver<StreamEvent>,
) -> Result<(Vec<u32>, String, FinishedEvent), RequestError> {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(event) = events.recv().await {
        match event {
            StreamEvent::Token(t) => {
                ids.push(t.token_id);
                text.push_str(&t.text_delta);
            }
            StreamEvent::Finished(f) => {
                text.push_str(&f.text_delta);
                return Ok((ids, text, f));
            }
            StreamEvent::Error(e) => return Err(e),
        }
    }
    Err(RequestError::Internal {
        message: "the engine dropped the stream".into(),
    })
}
