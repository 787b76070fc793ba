//! Runs one policy over the prompts on the arrival schedule: spawns a task per request
//! that waits for its send time (and a `--max-concurrency` permit), streams it to the
//! end and returns its record, while a background task scrapes KV gauges.
//!
//! It owns the timing of a run and nothing else: what to send comes from `client`, what
//! to make of the records from `report`.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{self, Connection, RequestSettings};
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
pub async fn warm_up(client: &Connection, plan: &RunPlan<'_>) -> usize {
    let mut failed = 0;
    let start = std::time::Instant::now();
    for (index, prompt) in plan
        .prompts
        .iter()
        .cycle()
        .take(plan.num_warmups)
        .enumerate()
    {
        let request = client::build_request(prompt, index, &plan.settings);
        let record = client::send(client.clone(), index, request, start).await;
        failed += usize::from(record.outcome.is_err());
    }
    failed
}

/// Runs `plan` and returns its records in prompt order. Fails only when the scraper
/// cannot read the metrics before the run (a wrong `--metrics-url`).
pub async fn run_policy(
    client: &Connection,
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

    let bar = progress_bar(&plan.label, plan.prompts.len());
    let semaphore = plan.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let run_start = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, (prompt, &offset)) in plan.prompts.iter().zip(plan.offsets_secs).enumerate() {
        let request = client::build_request(prompt, index, &plan.settings);
        let (client, semaphore, bar) = (client.clone(), semaphore.clone(), bar.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(run_start + Duration::from_secs_f64(offset)).await;
            let _permit = match &semaphore {
                Some(s) => Some(s.acquire().await.expect("the semaphore is never closed")),
                None => None,
            };
            let record = client::send(client, index, request, run_start.into_std()).await;
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

/// A bar on stderr (hidden when stderr is not a terminal), so stdout stays the report.
fn progress_bar(label: &str, len: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    )
    .expect("the template is a valid constant");
    ProgressBar::new(len as u64)
        .with_style(style)
        .with_prefix(label.to_owned())
}
