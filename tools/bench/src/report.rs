//! Turns the records of each policy run into the comparison a reader wants: one column
//! per policy, throughput and latency (as `vllm bench serve` prints them), KV memory
//! and agreement with the full-cache answers. Printed as Markdown and saved as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::client::{Completion, RequestRecord};
use super::openai::ModelCard;
use super::scrape::KvUsage;
use super::stats::{self, Goodput, Lengths, RequestLatency, Slo, Summary};

/// How close a policy's greedy outputs are to the full-cache outputs of the same prompts,
/// over prompts that succeeded in both runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Prompts compared.
    pub compared: usize,
    /// Mean of (tokens before the first difference) / (longer output's length).
    pub mean_prefix_agreement: f64,
    /// Fraction of outputs identical token for token.
    pub exact_match_rate: f64,
}

/// Share of two outputs that agree before they first differ, over the longer length;
/// two empty outputs agree fully.
pub fn prefix_agreement(reference: &[u32], output: &[u32]) -> f64 {
    let longer = reference.len().max(output.len());
    if longer == 0 {
        return 1.0;
    }
    let common = reference
        .iter()
        .zip(output)
        .take_while(|(a, b)| a == b)
        .count();
    common as f64 / longer as f64
}

/// Compares outputs index by index; `None` entries (failed requests) are skipped.
/// `None` when nothing could be compared.
pub fn agreement(reference: &[Option<&[u32]>], outputs: &[Option<&[u32]>]) -> Option<Agreement> {
    let pairs: Vec<(&[u32], &[u32])> = reference
        .iter()
        .zip(outputs)
        .filter_map(|(r, o)| Some(((*r)?, (*o)?)))
        .collect();
    let compared = pairs.len();
    (compared > 0).then(|| Agreement {
        compared,
        mean_prefix_agreement: pairs
            .iter()
            .map(|(r, o)| prefix_agreement(r, o))
            .sum::<f64>()
            / compared as f64,
        exact_match_rate: pairs.iter().filter(|(r, o)| r == o).count() as f64 / compared as f64,
    })
}

/// Everything measured for one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// CLI name of the policy (`full`, `snapkv`, ...; `default` = server default).
    pub policy: String,
    pub budget: Option<u32>,
    pub successful_requests: usize,
    pub failed_requests: usize,
    /// Failed requests by gRPC status code or HTTP status.
    pub errors: BTreeMap<String, usize>,
    /// The first failed request's message for each code or status, so a run that
    /// failed says why.
    pub first_errors: BTreeMap<String, String>,
    /// Successful requests by finish reason.
    pub finish_reasons: BTreeMap<String, usize>,
    pub duration_secs: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Prompt tokens per successful request, as the server counted them.
    pub input_lens: Option<Lengths>,
    /// Generated tokens per successful request.
    pub output_lens: Option<Lengths>,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft: Option<Summary>,
    pub tpot: Option<Summary>,
    pub itl: Option<Summary>,
    pub e2el: Option<Summary>,
    pub goodput: Option<Goodput>,
    pub peak_concurrency: usize,
    pub kv_usage: Option<KvUsage>,
    /// Mean prompt KV entries kept per (layer, KV head) after eviction.
    pub mean_kv_entries_kept: Option<f64>,
    pub kv_blocks_freed: u64,
    pub agreement_with_full: Option<Agreement>,
    /// Fraction of outputs containing the dataset's reference answer (case-insensitive),
    /// over prompts that have one.
    pub answer_accuracy: Option<f64>,
}

/// One policy run as measured: its records in prompt order, wall time and KV scrape.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    pub policy: String,
    pub budget: Option<u32>,
    pub records: Vec<RequestRecord>,
    pub duration_secs: f64,
    pub kv_usage: Option<KvUsage>,
}

impl PolicyRun {
    /// Output ids per prompt, `None` where the request failed or its ids are unknown.
    pub fn outputs(&self) -> Vec<Option<&[u32]>> {
        self.records
            .iter()
            .map(|r| r.outcome.as_ref().ok().and_then(Completion::ids))
            .collect()
    }

    fn completions(&self) -> impl Iterator<Item = &Completion> {
        self.records.iter().filter_map(|r| r.outcome.as_ref().ok())
    }
}

/// Builds the report of `run`. `slo` adds goodput; `answers[i]` is prompt i's reference
/// answer; `full` (the full-cache run of the same prompts) adds agreement.
pub fn summarize(
    run: &PolicyRun,
    slo: Option<&Slo>,
    answers: &[Option<&str>],
    full: Option<&PolicyRun>,
) -> PolicyReport {
    let done: Vec<&Completion> = run.completions().collect();
    let latencies: Vec<RequestLatency> = done
        .iter()
        .map(|c| RequestLatency {
            ttft_secs: c.ttft_secs,
            tpot_secs: stats::time_per_output_token_secs(
                c.e2e_secs,
                c.ttft_secs,
                c.output_tokens as usize,
            ),
            e2e_secs: c.e2e_secs,
        })
        .collect();
    let mut errors = BTreeMap::new();
    let mut first_errors = BTreeMap::new();
    for failure in run.records.iter().filter_map(|r| r.outcome.as_ref().err()) {
        *errors.entry(failure.code.clone()).or_insert(0) += 1;
        first_errors
            .entry(failure.code.clone())
            .or_insert_with(|| failure.message.clone());
    }
    let mut finish_reasons = BTreeMap::new();
    for c in &done {
        *finish_reasons.entry(c.finish_reason.clone()).or_insert(0) += 1;
    }
    let total_input_tokens: u64 = done.iter().map(|c| u64::from(c.prompt_tokens)).sum();
    let total_output_tokens: u64 = done.iter().map(|c| u64::from(c.output_tokens)).sum();
    let secs = run.duration_secs;
    let tpots: Vec<f64> = latencies.iter().filter_map(|l| l.tpot_secs).collect();
    let itls: Vec<f64> = done
        .iter()
        .flat_map(|c| c.itl_secs.iter().copied())
        .collect();
    let intervals: Vec<(f64, f64)> = run
        .records
        .iter()
        .map(|r| (r.start_secs, r.end_secs))
        .collect();
    PolicyReport {
        policy: run.policy.clone(),
        budget: run.budget,
        successful_requests: done.len(),
        failed_requests: run.records.len() - done.len(),
        errors,
        first_errors,
        finish_reasons,
        duration_secs: secs,
        total_input_tokens,
        total_output_tokens,
        input_lens: Lengths::from_counts(
            &done
                .iter()
                .map(|c| u64::from(c.prompt_tokens))
                .collect::<Vec<_>>(),
        ),
        output_lens: Lengths::from_counts(
            &done
                .iter()
                .map(|c| u64::from(c.output_tokens))
                .collect::<Vec<_>>(),
        ),
        request_throughput: stats::ratio(done.len() as f64, secs),
        output_token_throughput: stats::ratio(total_output_tokens as f64, secs),
        total_token_throughput: stats::ratio(
            (total_input_tokens + total_output_tokens) as f64,
            secs,
        ),
        ttft: Summary::from_secs(&latencies.iter().map(|l| l.ttft_secs).collect::<Vec<_>>()),
        tpot: Summary::from_secs(&tpots),
        itl: Summary::from_secs(&itls),
        e2el: Summary::from_secs(&latencies.iter().map(|l| l.e2e_secs).collect::<Vec<_>>()),
        goodput: slo.map(|slo| stats::goodput(slo, &latencies, run.records.len(), secs)),
        peak_concurrency: stats::peak_concurrency(&intervals),
        kv_usage: run.kv_usage,
        mean_kv_entries_kept: (!done.is_empty()).then(|| {
            done.iter()
                .map(|c| f64::from(c.kv_entries_kept))
                .sum::<f64>()
                / done.len() as f64
        }),
        kv_blocks_freed: done.iter().map(|c| u64::from(c.kv_blocks_freed)).sum(),
        agreement_with_full: full.and_then(|full| agreement(&full.outputs(), &run.outputs())),
        answer_accuracy: answer_accuracy(run, answers),
    }
}

fn answer_accuracy(run: &PolicyRun, answers: &[Option<&str>]) -> Option<f64> {
    let graded: Vec<bool> = run
        .records
        .iter()
        .filter_map(|r| {
            let answer = answers.get(r.index).copied().flatten()?;
            let text = r
                .outcome
                .as_ref()
                .map(|c| c.text.to_lowercase())
                .unwrap_or_default();
            Some(text.contains(&answer.to_lowercase()))
        })
        .collect();
    (!graded.is_empty())
        .then(|| graded.iter().filter(|&&hit| hit).count() as f64 / graded.len() as f64)
}

/// The whole benchmark: what was asked, against what, and one report per policy.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport<A: Serialize> {
    pub args: A,
    pub model: ServedModel,
    pub policies: Vec<PolicyReport>,
}

/// The served model as the backend describes it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum ServedModel {
    Grpc(ModelSummary),
    /// The `GET /v1/models` entry that was benchmarked.
    Openai(ModelCard),
}

/// The served model, from `GetModelInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub model_name: String,
    pub architecture: String,
    pub max_model_len: u32,
    pub block_size: u32,
    pub num_kv_blocks: u32,
    pub kv_cache_bytes: u64,
    pub lookahead_name: Option<String>,
}

/// A Markdown table with one column per policy.
pub fn markdown(reports: &[PolicyReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&PolicyReport) -> String| {
        rows.push((name.to_owned(), reports.iter().map(cell).collect()));
    };
    row("budget (entries/layer/head)", &|r| {
        opt(r.budget.map(f64::from), 0)
    });
    row("successful requests", &|r| {
        r.successful_requests.to_string()
    });
    row("failed requests", &|r| failed(r));
    for (name, pick) in LENGTHS {
        row(name, &|r| {
            pick(r).map_or("-".into(), |l| {
                format!("{} / {:.1} / {}", l.min, l.mean, l.max)
            })
        });
    }
    row("duration (s)", &|r| format!("{:.2}", r.duration_secs));
    row("requests/s", &|r| format!("{:.2}", r.request_throughput));
    row("output tokens/s", &|r| {
        format!("{:.1}", r.output_token_throughput)
    });
    row("total tokens/s", &|r| {
        format!("{:.1}", r.total_token_throughput)
    });
    for (name, pick) in LATENCIES {
        row(&format!("{name} mean / median (ms)"), &|r| {
            pick(r).map_or("-".into(), |s| {
                format!("{:.2} / {:.2}", s.mean_ms, s.median_ms)
            })
        });
        row(&format!("{name} p25 / p75 (ms)"), &|r| {
            pick(r).map_or("-".into(), |s| format!("{:.2} / {:.2}", s.p25_ms, s.p75_ms))
        });
        row(&format!("{name} p90 / p95 / p99 (ms)"), &|r| {
            pick(r).map_or("-".into(), |s| {
                format!("{:.2} / {:.2} / {:.2}", s.p90_ms, s.p95_ms, s.p99_ms)
            })
        });
        row(&format!("{name} min / max (ms)"), &|r| {
            pick(r).map_or("-".into(), |s| format!("{:.2} / {:.2}", s.min_ms, s.max_ms))
        });
    }
    row("goodput (req/s, fraction)", &|r| {
        r.goodput.map_or("-".into(), |g| {
            format!("{:.2}, {:.1}%", g.requests_per_sec, g.fraction * 100.0)
        })
    });
    row("peak concurrency (client, in flight)", &|r| {
        r.peak_concurrency.to_string()
    });
    row("peak requests running (server)", &|r| {
        opt(r.kv_usage.and_then(|k| k.peak.requests_running), 0)
    });
    row("peak KV usage", &|r| {
        pct(r.kv_usage.and_then(|k| k.peak.usage_ratio))
    });
    row("peak KV blocks used", &|r| {
        opt(r.kv_usage.and_then(|k| k.peak.blocks_used), 0)
    });
    row("mean KV entries kept", &|r| opt(r.mean_kv_entries_kept, 1));
    row("KV blocks freed by eviction", &|r| {
        r.kv_blocks_freed.to_string()
    });
    row("agreement with full (prefix)", &|r| {
        pct(r.agreement_with_full.map(|a| a.mean_prefix_agreement))
    });
    row("exact match with full", &|r| {
        pct(r.agreement_with_full.map(|a| a.exact_match_rate))
    });
    row("answer accuracy", &|r| pct(r.answer_accuracy));

    let mut out = String::from("| metric |");
    for r in reports {
        out.push_str(&format!(" {} |", r.policy));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(reports.len()));
    out.push('\n');
    for (name, cells) in rows {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out
}

/// One CSV row per request of every run (header first), for plotting or a spreadsheet:
/// times in seconds since its run started, latencies in ms, and the code (gRPC) or status (HTTP) and
/// message of failures. Fields are quoted per RFC 4180 where needed.
pub fn csv(runs: &[PolicyRun]) -> String {
    let mut out = String::from(
        "policy,index,start_secs,end_secs,status,ttft_ms,e2e_ms,prompt_tokens,output_tokens,finish_reason,message\n",
    );
    for run in runs {
        for r in &run.records {
            let fields: Vec<String> = match &r.outcome {
                Ok(c) => vec![
                    "ok".into(),
                    format!("{:.3}", c.ttft_secs * 1e3),
                    format!("{:.3}", c.e2e_secs * 1e3),
                    c.prompt_tokens.to_string(),
                    c.output_tokens.to_string(),
                    c.finish_reason.clone(),
                    String::new(),
                ],
                Err(f) => {
                    let mut row = vec![f.code.clone()];
                    row.extend(std::iter::repeat_n(String::new(), 5));
                    row.push(f.message.clone());
                    row
                }
            };
            let row: Vec<String> = [
                run.policy.clone(),
                r.index.to_string(),
                format!("{:.6}", r.start_secs),
                format!("{:.6}", r.end_secs),
            ]
            .into_iter()
            .chain(fields)
            .map(|f| csv_field(&f))
            .collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

/// One JSON line per request of every run: policy, index and either the output (`text`,
/// and `token_ids` when known) or the failure's `error` code. Written by `--output-texts`
/// so two runs (gRPC and HTTP, or two servers) can be checked token for token.
pub fn texts_jsonl(runs: &[PolicyRun]) -> String {
    let mut out = String::new();
    for run in runs {
        for r in &run.records {
            let line = match &r.outcome {
                Ok(c) => serde_json::json!({
                    "policy": run.policy,
                    "index": r.index,
                    "text": c.text,
                    "token_ids": c.ids(),
                }),
                Err(f) => serde_json::json!({
                    "policy": run.policy,
                    "index": r.index,
                    "error": f.code,
                }),
            };
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

type LengthPick = fn(&PolicyReport) -> Option<Lengths>;

const LENGTHS: [(&str, LengthPick); 2] = [
    ("input tokens min / mean / max", |r| r.input_lens),
    ("output tokens min / mean / max", |r| r.output_lens),
];

type LatencyPick = fn(&PolicyReport) -> Option<Summary>;

const LATENCIES: [(&str, LatencyPick); 4] = [
    ("TTFT", |r| r.ttft),
    ("TPOT", |r| r.tpot),
    ("ITL", |r| r.itl),
    ("E2E", |r| r.e2el),
];

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn pct(fraction: Option<f64>) -> String {
    fraction.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
}

fn failed(r: &PolicyReport) -> String {
    if r.errors.is_empty() {
        return r.failed_requests.to_string();
    }
    let codes: Vec<String> = r
        .errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    format!("{} ({})", r.failed_requests, codes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::client::Failure;
    use super::*;

    fn done(index: usize, start: f64, ids: &[u32], text: &str) -> RequestRecord {
        RequestRecord {
            index,
            start_secs: start,
            end_secs: start + 1.0,
            outcome: Ok(Completion {
                ttft_secs: 0.1,
                itl_secs: vec![0.3; ids.len().saturating_sub(1)],
                e2e_secs: 1.0,
                output_tokens: ids.len() as u32,
                output_ids: ids.to_vec(),
                text: text.into(),
                prompt_tokens: 10,
                finish_reason: "FINISH_REASON_LENGTH".into(),
                kv_entries_kept: 8,
                kv_blocks_freed: 2,
            }),
        }
    }

    fn failed_record(index: usize) -> RequestRecord {
        RequestRecord {
            index,
            start_secs: 0.0,
            end_secs: 0.5,
            outcome: Err(Failure {
                code: "ResourceExhausted".into(),
                message: "full".into(),
            }),
        }
    }

    fn run(policy: &str, records: Vec<RequestRecord>) -> PolicyRun {
        PolicyRun {
            policy: policy.into(),
            budget: Some(8),
            records,
            duration_secs: 2.0,
            kv_usage: None,
        }
    }

    #[test]
    fn prefix_agreement_stops_at_the_first_difference() {
        assert_eq!(prefix_agreement(&[1, 2, 3, 4], &[1, 2, 9, 4]), 0.5);
        assert_eq!(prefix_agreement(&[1, 2], &[1, 2, 3, 4]), 0.5);
        assert_eq!(prefix_agreement(&[], &[]), 1.0);
    }

    #[test]
    fn agreement_skips_prompts_that_failed_in_either_run() {
        let a = agreement(
            &[Some(&[1, 2][..]), None, Some(&[3][..])],
            &[Some(&[1, 2][..]), Some(&[5][..]), Some(&[4][..])],
        )
        .unwrap();
        assert_eq!(a.compared, 2);
        assert_eq!(a.exact_match_rate, 0.5);
        assert_eq!(a.mean_prefix_agreement, 0.5);
        assert_eq!(agreement(&[None], &[Some(&[1][..])]), None);
    }

    #[test]
    fn reports_count_tokens_errors_and_throughput_over_the_run() {
        let full = run(
            "full",
            vec![
                done(0, 0.0, &[1, 2, 3], "Paris"),
                done(1, 0.5, &[4, 5, 6], "no"),
            ],
        );
        let snap = run(
            "snapkv",
            vec![done(0, 0.0, &[1, 2, 9], "paris!"), failed_record(1)],
        );
        let answers = [Some("Paris"), Some("Rome")];
        let report = summarize(&snap, None, &answers, Some(&full));
        assert_eq!((report.successful_requests, report.failed_requests), (1, 1));
        assert_eq!(report.errors.get("ResourceExhausted"), Some(&1));
        assert_eq!(report.finish_reasons.get("FINISH_REASON_LENGTH"), Some(&1));
        assert_eq!(
            (report.total_input_tokens, report.total_output_tokens),
            (10, 3)
        );
        assert_eq!(report.output_token_throughput, 1.5);
        let input = report.input_lens.unwrap();
        assert_eq!((input.min, input.max), (10, 10));
        assert_eq!(report.output_lens.unwrap().max, 3);
        assert_eq!(report.total_token_throughput, 6.5);
        assert_eq!(report.tpot.unwrap().count, 1);
        assert!((report.tpot.unwrap().mean_ms - 450.0).abs() < 1e-9);
        assert_eq!(report.itl.unwrap().count, 2);
        assert_eq!(report.agreement_with_full.unwrap().compared, 1);
        assert_eq!(report.answer_accuracy, Some(0.5));
        assert_eq!(report.peak_concurrency, 2);
    }

    #[test]
    fn reports_keep_the_first_message_of_each_error_code() {
        let failure = |index, code: &str, message: &str| RequestRecord {
            outcome: Err(Failure {
                code: code.into(),
                message: message.into(),
            }),
            ..failed_record(index)
        };
        let records = vec![
            failure(
                0,
                "InvalidArgument",
                "prompt (1024 tokens) + max_tokens (128) too long",
            ),
            failure(1, "InvalidArgument", "a later message"),
            failure(2, "Unavailable", "draining"),
        ];
        let report = summarize(&run("full", records), None, &[], None);
        assert_eq!(
            report
                .first_errors
                .get("InvalidArgument")
                .map(String::as_str),
            Some("prompt (1024 tokens) + max_tokens (128) too long")
        );
        assert_eq!(
            report.first_errors.get("Unavailable").map(String::as_str),
            Some("draining")
        );
        assert_eq!(report.first_errors.len(), 2);
    }

    #[test]
    fn csv_has_one_row_per_request_and_quotes_messages() {
        let records = vec![
            done(0, 0.0, &[1, 2], "ab"),
            RequestRecord {
                outcome: Err(Failure {
                    code: "InvalidArgument".into(),
                    message: "prompt, \"too\" long".into(),
                }),
                ..failed_record(1)
            },
        ];
        let table = csv(&[run("full", records)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("policy,index,start_secs,"));
        assert!(lines[1].starts_with("full,0,0.000000,"), "{table}");
        assert!(lines[1].contains(",ok,"), "{table}");
        assert!(lines[1].ends_with(",10,2,FINISH_REASON_LENGTH,"), "{table}");
        assert_eq!(
            lines[2],
            "full,1,0.000000,0.500000,InvalidArgument,,,,,,\"prompt, \"\"too\"\" long\""
        );
    }

    #[test]
    fn output_texts_have_one_json_line_per_request_with_ids_only_when_known() {
        let mut text_only = done(1, 0.0, &[], "cd");
        if let Ok(c) = &mut text_only.outcome {
            c.output_tokens = 2;
        }
        let records = vec![done(0, 0.0, &[1, 2], "ab"), text_only, failed_record(2)];
        let lines: Vec<serde_json::Value> = texts_jsonl(&[run("full", records)])
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"policy": "full", "index": 0, "text": "ab", "token_ids": [1, 2]}),
                serde_json::json!({"policy": "full", "index": 1, "text": "cd", "token_ids": null}),
                serde_json::json!({"policy": "full", "index": 2, "error": "ResourceExhausted"}),
            ]
        );
    }

    #[test]
    fn the_markdown_table_has_one_column_per_policy() {
        let reports = [
            summarize(&run("full", vec![done(0, 0.0, &[1], "")]), None, &[], None),
            summarize(&run("lookahead", vec![failed_record(0)]), None, &[], None),
        ];
        let table = markdown(&reports);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| metric | full | lookahead |");
        assert_eq!(lines[1], "|---|---:|---:|");
        assert!(
            table.contains("| failed requests | 0 | 1 (ResourceExhausted 1) |"),
            "{table}"
        );
        for row in [
            "| TTFT p25 / p75 (ms) |",
            "| TTFT p90 / p95 / p99 (ms) |",
            "| TTFT min / max (ms) |",
            "| output tokens min / mean / max | 1 / 1.0 / 1 | - |",
        ] {
            assert!(table.contains(row), "{row} not in {table}");
        }
        assert!(lines.iter().all(|l| l.matches('|').count() == 4), "{table}");
    }
}
