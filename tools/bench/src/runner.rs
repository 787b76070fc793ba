//! Runs one policy over the prompts on the arrival schedule: spawns a task per request
//! that waits for its send time (and a `--max-concurrency` permit), streams it to the
//! end and returns its record, while a background task scrapes KV gauges.
//!
//! It owns the timing of a run and nothing else: how to send comes from `backend`, what
//! to make of the records from `report`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backend::Backend;
use super::client::RequestSettings;
use super::dataset::Prompt;
use super::report::PolicyRun;
use super::scrape::{self, KvSample, KvUsage, MetricsUrl, ScrapeError};

/// How long one scrape may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to read KV gauges and how often.
#[derive(Debug, Clone)]
pub struct Scraper {
    pub url: MetricsUrl,
    pub interval: Duration,
}

/// One policy's run: the prompts, their send times and the shared request settings.
pub struct RunPlan<'a> {
    /// Name shown in the report and progress bar.
    pub label: String,
    pub prompts: &'a [Prompt],
    /// Send time of each prompt, seconds from the start; as long as `prompts`.
    pub offsets_secs: &'a [f64],
    pub max_concurrency: Option<usize>,
    pub settings: RequestSettings,
    pub num_warmups: usize,
}

/// Sends the first `plan.num_warmups` prompts one at a time, unrecorded, so the run does
/// not measure first-call costs (connections, lazy allocations). Returns how many failed.
pub async fn warm_up(backend: &Backend, plan: &RunPlan<'_>) -> usize {
    let mut failed = 0;
    let start = std::time::Instant::now();
    for (index, prompt) in plan
        .prompts
        .iter()
        .cycle()
        .take(plan.num_warmups)
        .enumerate()
    {
        let record = backend.send(prompt, index, &plan.settings, start).await;
        failed += usize::from(record.outcome.is_err());
    }
    failed
}

/// Runs `plan` and returns its records in prompt order. Fails only when the scraper
/// cannot read the metrics before the run (a wrong `--metrics-url`).
pub async fn run_policy(
    backend: &Backend,
    plan: &RunPlan<'_>,
    scraper: Option<&Scraper>,
) -> Result<PolicyRun, ScrapeError> {
    assert_eq!(
        plan.prompts.len(),
        plan.offsets_secs.len(),
        "one send time per prompt"
    );
    let before = match scraper {
        Some(s) => Some(KvSample::parse(
            &scrape::fetch(&s.url, SCRAPE_TIMEOUT).await?,
        )),
        None => None,
    };
    let (stop_scraping, stopped) = oneshot::channel();
    let scraping = scraper
        .cloned()
        .map(|s| tokio::spawn(scrape_until(s, stopped)));

    let bar = glimpse_progress::bar(&plan.label, plan.prompts.len());
    let semaphore = plan.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let run_start = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, (prompt, &offset)) in plan.prompts.iter().zip(plan.offsets_secs).enumerate() {
        let (backend, semaphore, bar) = (backend.clone(), semaphore.clone(), bar.clone());
        let (prompt, settings) = (prompt.clone(), plan.settings);
        tasks.spawn(async move {
            tokio::time::sleep_until(run_start + Duration::from_secs_f64(offset)).await;
            let _permit = match &semaphore {
                Some(s) => Some(s.acquire().await.expect("the semaphore is never closed")),
                None => None,
            };
            let record = backend
                .send(&prompt, index, &settings, run_start.into_std())
                .await;
            bar.inc(1);
            record
        });
    }
    let mut records = Vec::with_capacity(plan.prompts.len());
    while let Some(joined) = tasks.join_next().await {
        records.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    let duration_secs = run_start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    records.sort_by_key(|r| r.index);

    let _ = stop_scraping.send(());
    let kv_usage = match (scraping, scraper) {
        (Some(task), Some(s)) => {
            let mut usage = task.await.unwrap_or_default();
            usage.before = before.unwrap_or_default();
            usage.after = scrape::fetch(&s.url, SCRAPE_TIMEOUT)
                .await
                .map(|text| KvSample::parse(&text))
                .unwrap_or_default();
            Some(usage)
        }
        _ => None,
    };
    Ok(PolicyRun {
        policy: plan.label.clone(),
        budget: plan.settings.budget,
        records,
        duration_secs,
        kv_usage,
    })
}

/// Polls the gauges every `interval` until told to stop; failed scrapes are skipped (the
/// server may be too busy to answer, which is the moment that matters least to lose).
async fn scrape_until(scraper: Scraper, mut stop: oneshot::Receiver<()>) -> KvUsage {
    let mut usage = KvUsage::default();
    let mut ticks = tokio::time::interval(scraper.interval);
    loop {
        tokio::select! {
            _ = &mut stop => return usage,
            _ = ticks.tick() => {
                if let Ok(text) = scrape::fetch(&scraper.url, SCRAPE_TIMEOUT).await {
                    usage.observe(KvSample::parse(&text));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use glimpse_proto::v1::generation_server::{Generation, GenerationServer};
    use glimpse_proto::v1::{self, FinishReason, GenerateResponse, KvPolicy, generate_response};

    use crate::client;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::dataset::PromptInput;
    use crate::stats;

    /// Streams tokens 7, 8, 9 as "a", "b", "c" and a LENGTH `Final`; refuses `bench-2`.
    struct FakeServer;

    type Stream = tokio_stream::Iter<std::vec::IntoIter<Result<GenerateResponse, Status>>>;

    #[tonic::async_trait]
    impl Generation for FakeServer {
        type GenerateStream = Stream;

        async fn generate(
            &self,
            request: Request<v1::GenerateRequest>,
        ) -> Result<Response<Stream>, Status> {
            if request.get_ref().request_id.as_deref() == Some("bench-2") {
                return Err(Status::resource_exhausted("no KV blocks left"));
            }
            let chunk = |id: u32, text: &str| {
                let chunk = v1::Chunk {
                    token_ids: vec![id],
                    text: text.into(),
                    logprobs: vec![],
                };
                Ok(GenerateResponse {
                    kind: Some(generate_response::Kind::Chunk(chunk)),
                })
            };
            let last = v1::Final {
                finish_reason: FinishReason::Length.into(),
                usage: Some(v1::Usage {
                    prompt_tokens: 5,
                    completion_tokens: 3,
                    kv_entries_kept: 5,
                    kv_blocks_freed: 0,
                }),
                ..Default::default()
            };
            let messages = vec![
                chunk(7, "a"),
                chunk(8, "b"),
                chunk(9, "c"),
                Ok(GenerateResponse {
                    kind: Some(generate_response::Kind::Final(last)),
                }),
            ];
            Ok(Response::new(tokio_stream::iter(messages)))
        }

        async fn tokenize(
            &self,
            _: Request<v1::TokenizeRequest>,
        ) -> Result<Response<v1::TokenizeResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn detokenize(
            &self,
            _: Request<v1::DetokenizeRequest>,
        ) -> Result<Response<v1::DetokenizeResponse>, Status> {
            Err(Status::unimplemented("not faked"))
        }

        async fn get_model_info(
            &self,
            _: Request<v1::GetModelInfoRequest>,
        ) -> Result<Response<v1::ModelInfo>, Status> {
            Err(Status::unimplemented("not faked"))
        }
    }

    async fn serve_fake() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback bind");
        let address = listener.local_addr().expect("bound address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GenerationServer::new(FakeServer))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    #[tokio::test]
    async fn a_run_against_a_fake_server_records_every_request_in_prompt_order() {
        let client = Backend::Grpc(
            client::connect(&serve_fake().await)
                .await
                .expect("fake server is up"),
        );
        let prompt = Prompt {
            input: PromptInput::Text("hi".into()),
            max_tokens: 3,
            answer: None,
        };
        let prompts = vec![prompt; 4];
        let plan = RunPlan {
            label: "full".into(),
            prompts: &prompts,
            offsets_secs: &[0.0; 4],
            max_concurrency: Some(2),
            settings: RequestSettings {
                temperature: Some(0.0),
                seed: 0,
                ignore_eos: false,
                policy: KvPolicy::Full,
                budget: None,
            },
            num_warmups: 1,
        };
        assert_eq!(warm_up(&client, &plan).await, 0);
        let run = run_policy(&client, &plan, None)
            .await
            .expect("no scraper, no scrape error");

        let indices: Vec<usize> = run.records.iter().map(|r| r.index).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        let refused = run.records[2]
            .outcome
            .as_ref()
            .expect_err("bench-2 is refused");
        assert_eq!(refused.code, "ResourceExhausted");
        let done = run.records[0].outcome.as_ref().expect("bench-0 completes");
        assert_eq!(
            (done.output_ids.as_slice(), done.text.as_str()),
            (&[7, 8, 9][..], "abc")
        );
        assert_eq!(
            (
                done.itl_secs.len(),
                done.prompt_tokens,
                done.finish_reason.as_str()
            ),
            (2, 5, FinishReason::Length.as_str_name())
        );
        let intervals: Vec<(f64, f64)> = run
            .records
            .iter()
            .map(|r| (r.start_secs, r.end_secs))
            .collect();
        assert!(
            stats::peak_concurrency(&intervals) <= 2,
            "--max-concurrency 2 holds"
        );
    }
}
