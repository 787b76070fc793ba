//! The numbers of `glimpse eval` as a reader wants them: one Markdown table of every policy at
//! every budget, the best policy per budget, JSON to compare runs later, and one PNG line
//! chart per metric (budget on a log₂ axis, one line per policy).
//!
//! Knows nothing of models, caches or timing: it formats [`EvalRow`]s measured elsewhere.
//! Plot text uses the bundled font of [`super::output`].

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::accuracy::{self, AnswerOutcome};
use super::output::{FONT_FAMILY, ReportError, register_font};

/// One policy at one budget, averaged over the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// Policy label, e.g. `lookahead`, `lookahead (no LoRA)`, `lookahead (8 tokens)`,
    /// `snapkv`, `pyramidkv`, `streaming_llm`; one line in each plot.
    pub policy: String,
    /// Prompt tokens kept per (layer, KV head).
    pub budget: usize,
    /// Mean fraction of greedy answer tokens identical to the full-cache answer (0..1).
    pub agreement: f64,
    /// Mean index of the first token that differs (the answer length when none does).
    pub first_divergence: f64,
    /// Mean teacher-forced KL(full ‖ evicted) of next-token distributions, nats per token.
    pub kl: f64,
    /// Mean fraction of ground-truth attention mass kept (0..1).
    pub recall: f64,
    /// Fraction of greedy answers containing the prompt's expected answer (0..1); `None` when
    /// the prompts carry no answers.
    #[serde(default)]
    pub accuracy: Option<f64>,
    /// Median prefill time with the policy over median full-cache prefill time, minus 1
    /// (0.03 = 3 % slower).
    pub ttft_overhead: f64,
    /// How the entries a LookaheadKV run kept with a KV pool other than f32 compare with the
    /// ones it keeps with an f32 pool; `None` for f32 runs and other policies.
    #[serde(default)]
    pub kept_like_f32: Option<KeptLikeF32>,
}

/// A LookaheadKV selection at a compact KV dtype against the same selection at f32 KV.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeptLikeF32 {
    /// Fraction of (layer, KV head) kept sets equal to the f32 ones (0..1).
    pub equal_sets: f64,
    /// Fraction of the f32 run's kept entries kept too (0..1).
    pub shared_entries: f64,
}

/// Everything one `glimpse eval` run measured, with what it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Model folder name.
    pub model: String,
    pub prompts_file: String,
    pub num_prompts: usize,
    pub mean_prompt_tokens: f64,
    /// Greedy tokens generated per prompt and policy.
    pub answer_tokens: usize,
    /// (policy label, module file name) of each lookahead variant, so a row can be traced
    /// to the weights that produced it.
    pub modules: Vec<(String, String)>,
    pub rows: Vec<EvalRow>,
    /// Per budget, the attention recall of an oracle that keeps the top entries by the answer's
    /// own attention (the training target): the ceiling of any predictor's recall.
    #[serde(default)]
    pub oracle_recall: Vec<(usize, f64)>,
    /// Every greedy answer scored against its prompt's expected answer (full cache and every
    /// policy × budget); empty when the prompts carry no answers.
    #[serde(default)]
    pub accuracy: Vec<AnswerOutcome>,
}

/// A quantity plotted against the budget, one chart each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Agreement,
    Kl,
    Recall,
    TtftOverhead,
    /// Exact-answer accuracy; only for prompts that carry their expected answer.
    Accuracy,
}

impl Metric {
    /// Every metric, in the order `plot_all` draws them.
    pub const ALL: [Metric; 5] = [
        Metric::Agreement,
        Metric::Kl,
        Metric::Recall,
        Metric::TtftOverhead,
        Metric::Accuracy,
    ];

    /// Name for titles and headings.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Agreement => "Agreement",
            Metric::Kl => "KL",
            Metric::Recall => "Attention recall",
            Metric::TtftOverhead => "TTFT overhead",
            Metric::Accuracy => "Exact-answer accuracy",
        }
    }

    /// Y-axis label, with the unit plotted (fractions are plotted as percentages).
    pub fn axis_label(self) -> &'static str {
        match self {
            Metric::Agreement => "answer tokens equal to full cache (%)",
            Metric::Kl => "KL(full ‖ evicted) (nats/token)",
            Metric::Recall => "attention mass kept (%)",
            Metric::TtftOverhead => "prefill time over full cache (%)",
            Metric::Accuracy => "greedy answers containing the expected one (%)",
        }
    }

    /// The row's value as stored (fractions stay fractions).
    pub fn value(self, row: &EvalRow) -> f64 {
        match self {
            Metric::Agreement => row.agreement,
            Metric::Kl => row.kl,
            Metric::Recall => row.recall,
            Metric::TtftOverhead => row.ttft_overhead,
            Metric::Accuracy => row.accuracy.unwrap_or(f64::NAN),
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Metric::Agreement => "eval-agreement.png",
            Metric::Kl => "eval-kl.png",
            Metric::Recall => "eval-recall.png",
            Metric::TtftOverhead => "eval-ttft.png",
            Metric::Accuracy => "eval-accuracy.png",
        }
    }

    /// The value as a table cell.
    fn cell(self, row: &EvalRow) -> String {
        let value = self.value(row);
        match self {
            Metric::Agreement | Metric::Recall | Metric::Accuracy => {
                format!("{:.1} %", value * 100.0)
            }
            Metric::Kl => format!("{value:.4}"),
            Metric::TtftOverhead => format!("{:+.1} %", value * 100.0),
        }
    }

    /// The value in the unit of [`Metric::axis_label`].
    fn plotted(self, row: &EvalRow) -> f64 {
        match self {
            Metric::Kl => self.value(row),
            _ => self.value(row) * 100.0,
        }
    }

    /// Plotted values outside these cannot occur, so the y axis never extends past them.
    fn plot_limits(self) -> (f64, f64) {
        match self {
            Metric::Agreement | Metric::Recall | Metric::Accuracy => (0.0, 100.0),
            Metric::Kl => (0.0, f64::INFINITY),
            Metric::TtftOverhead => (f64::NEG_INFINITY, f64::INFINITY),
        }
    }
}

/// The report as Markdown: a line saying what ran, one table of every row (by budget, then
/// policies in order of first appearance in `report.rows`), then the policy with the highest
/// agreement and the one with the lowest KL at each budget.
pub fn markdown(report: &EvalReport) -> String {
    let mut out = format!(
        "**{}**: {} prompts from `{}`, mean prompt length {:.1} tokens, {} answer tokens each.\n\n",
        report.model,
        report.num_prompts,
        report.prompts_file,
        report.mean_prompt_tokens,
        report.answer_tokens
    );
    if !report.modules.is_empty() {
        let modules: Vec<String> = report
            .modules
            .iter()
            .map(|(label, file)| format!("{label}: `{file}`"))
            .collect();
        out.push_str(&format!("Lookahead modules: {}.\n\n", modules.join(", ")));
    }
    if report.rows.is_empty() {
        out.push_str(&accuracy::markdown(&report.accuracy));
        return out;
    }
    let rows = in_table_order(&report.rows);
    out.push_str("| policy | budget | agreement | first divergence | KL (nats/token) | attention recall | TTFT overhead |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} | {} | {} |\n",
            row.policy,
            row.budget,
            Metric::Agreement.cell(row),
            row.first_divergence,
            Metric::Kl.cell(row),
            Metric::Recall.cell(row),
            Metric::TtftOverhead.cell(row),
        ));
    }
    let kept: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            row.kept_like_f32.map(|k| {
                format!(
                    "{} at {}: {:.1} % of sets equal, {:.1} % of entries shared",
                    row.policy,
                    row.budget,
                    k.equal_sets * 100.0,
                    k.shared_entries * 100.0
                )
            })
        })
        .collect();
    if !kept.is_empty() {
        out.push_str(&format!(
            "\n(Layer, KV head) kept sets against the same policy with an f32 KV cache: {}.\n",
            kept.join("; ")
        ));
    }
    if !report.oracle_recall.is_empty() {
        let cells: Vec<String> = report
            .oracle_recall
            .iter()
            .map(|(budget, recall)| format!("{budget}: {:.1} %", recall * 100.0))
            .collect();
        out.push_str(&format!(
            "\nOracle attention recall (top entries by the answer's own attention): {}.\n",
            cells.join(", ")
        ));
    }
    out.push_str("\nBest policy per budget:\n\n");
    out.push_str("| budget | highest agreement | lowest KL |\n|---:|---|---|\n");
    for budget in budgets(&report.rows) {
        let at_budget: Vec<&EvalRow> = rows
            .iter()
            .copied()
            .filter(|r| r.budget == budget)
            .collect();
        let best = |metric: Metric, higher_is_better: bool| {
            best_row(&at_budget, metric, higher_is_better)
                .map_or("-".into(), |r| format!("{} ({})", r.policy, metric.cell(r)))
        };
        out.push_str(&format!(
            "| {budget} | {} | {} |\n",
            best(Metric::Agreement, true),
            best(Metric::Kl, false)
        ));
    }
    if !report.accuracy.is_empty() {
        out.push('\n');
        out.push_str(&accuracy::markdown(&report.accuracy));
    }
    out
}

/// Writes the report as pretty JSON. Fails on I/O, or on a NaN or infinite number, which
/// JSON cannot hold (the file would not read back).
pub fn write_json(report: &EvalReport, path: &Path) -> Result<(), ReportError> {
    check_finite(report)?;
    let json = serde_json::to_string_pretty(report).map_err(|source| ReportError::Json {
        path: path.to_owned(),
        source,
    })?;
    fs::write(path, json + "\n").map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a report written by [`write_json`]. Fails on I/O or when the file is not one.
pub fn read_json(path: &Path) -> Result<EvalReport, ReportError> {
    let text = fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReportError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Draws `metric` against the budget as a 960×500 PNG at `path`: one line per policy, a
/// legend beside the chart. Rows whose value is NaN or infinite are left out. Fails when the
/// report has no rows or the file cannot be written.
pub fn plot(report: &EvalReport, metric: Metric, path: &Path) -> Result<(), ReportError> {
    let fail = |message: String| ReportError::Plot {
        path: path.to_owned(),
        message,
    };
    if report.rows.is_empty() {
        return Err(fail("the report has no rows".into()));
    }
    if !register_font() {
        return Err(fail("the bundled DejaVuSans.ttf did not parse".into()));
    }
    draw(report, metric, path).map_err(|e| fail(e.to_string()))
}

/// Plots every metric into `dir` (created if missing) as `eval-agreement.png`,
/// `eval-kl.png`, `eval-recall.png`, `eval-ttft.png`, and when the prompts carried answers
/// `eval-accuracy.png` and the depth heat maps (only those when the report has no policy rows:
/// a full-cache accuracy run); returns their paths.
pub fn plot_all(report: &EvalReport, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let has_accuracy = report.rows.iter().any(|r| r.accuracy.is_some());
    let metrics: &[Metric] = if report.rows.is_empty() {
        &[]
    } else {
        &Metric::ALL
    };
    let mut paths = metrics
        .iter()
        .filter(|&&metric| metric != Metric::Accuracy || has_accuracy)
        .map(|&metric| {
            let path = dir.join(metric.file_name());
            plot(report, metric, &path).map(|()| path)
        })
        .collect::<Result<Vec<_>, _>>()?;
    paths.extend(accuracy::plot_depth_heat_maps(&report.accuracy, dir)?);
    Ok(paths)
}

const PLOT_SIZE: (u32, u32) = (960, 500);
/// Width of the chart; the rest of the image holds the legend.
const CHART_WIDTH: u32 = 600;
/// Room left and right of the outermost budgets on the x axis, as a factor (about ⅓ octave).
const X_MARGIN: f64 = 1.25;
fn draw<'a>(
    report: &EvalReport,
    metric: Metric,
    path: &'a Path,
) -> DrawResult<(), BitMapBackend<'a>> {
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!("{} vs KV budget — {}", metric.name(), report.model);
    let root = root.margin(10, 0, 0, 0).titled(&title, (FONT_FAMILY, 22))?;
    let (chart_area, legend_area) = root.split_horizontally(CHART_WIDTH);

    let x_keys: Vec<f64> = budgets(&report.rows).into_iter().map(x_of).collect();
    let x_lo = x_keys.first().copied().unwrap_or(1.0) / X_MARGIN;
    let x_hi = x_keys.last().copied().unwrap_or(1.0) * X_MARGIN;
    let y_values: Vec<f64> = report.rows.iter().map(|r| metric.plotted(r)).collect();
    let (y_lo, y_hi) = padded(&y_values, metric.plot_limits());

    let mut chart = ChartBuilder::on(&chart_area)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_lo..x_hi).log_scale().base(2.0).with_key_points(x_keys),
            y_lo..y_hi,
        )?;
    chart
        .configure_mesh()
        .x_desc("KV budget (prompt tokens kept per layer and KV head)")
        .y_desc(metric.axis_label())
        .x_label_formatter(&|x| format!("{x}"))
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()?;

    for (i, policy) in policy_order(&report.rows).into_iter().enumerate() {
        let color = series_colour(i);
        let mut points: Vec<(usize, f64)> = report
            .rows
            .iter()
            .filter(|r| r.policy == policy)
            .map(|r| (r.budget, metric.plotted(r)))
            .filter(|(_, y)| y.is_finite())
            .collect();
        points.sort_by_key(|&(budget, _)| budget);
        let points: Vec<(f64, f64)> = points.into_iter().map(|(b, y)| (x_of(b), y)).collect();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;

        let y = 40 + 24 * i as i32;
        legend_area.draw(&PathElement::new([(4, y), (32, y)], color.stroke_width(2)))?;
        legend_area.draw(&Circle::new((18, y), 4, color.filled()))?;
        let label_style = (FONT_FAMILY, 15)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        legend_area.draw(&Text::new(policy.to_owned(), (40, y), label_style))?;
    }
    root.present()
}

/// Line colour of the `i`-th policy: matplotlib's `tab10`, distinct and readable on white,
/// repeating after ten.
fn series_colour(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

/// Rows by budget, then by policy in order of first appearance.
fn in_table_order(rows: &[EvalRow]) -> Vec<&EvalRow> {
    let policies = policy_order(rows);
    let mut sorted: Vec<&EvalRow> = rows.iter().collect();
    sorted.sort_by_key(|r| {
        let rank = policies.iter().position(|p| *p == r.policy);
        (
            r.budget,
            rank.expect("every row's policy is in policy_order"),
        )
    });
    sorted
}

/// Policy labels in order of first appearance.
fn policy_order(rows: &[EvalRow]) -> Vec<&str> {
    let mut policies: Vec<&str> = Vec::new();
    for row in rows {
        if !policies.contains(&row.policy.as_str()) {
            policies.push(&row.policy);
        }
    }
    policies
}

/// Distinct budgets, ascending.
fn budgets(rows: &[EvalRow]) -> Vec<usize> {
    let mut budgets: Vec<usize> = rows.iter().map(|r| r.budget).collect();
    budgets.sort_unstable();
    budgets.dedup();
    budgets
}

/// The row with the best value of `metric`, the earliest on ties; NaN never wins.
fn best_row<'a>(
    rows: &[&'a EvalRow],
    metric: Metric,
    higher_is_better: bool,
) -> Option<&'a EvalRow> {
    rows.iter()
        .copied()
        .filter(|r| !metric.value(r).is_nan())
        .reduce(|best, r| {
            let (current, candidate) = (metric.value(best), metric.value(r));
            let better = if higher_is_better {
                candidate > current
            } else {
                candidate < current
            };
            if better { r } else { best }
        })
}

fn check_finite(report: &EvalReport) -> Result<(), ReportError> {
    let non_finite = |field: String, value: f64| {
        (!value.is_finite()).then_some(ReportError::NonFinite { field, value })
    };
    if let Some(e) = non_finite("mean_prompt_tokens".into(), report.mean_prompt_tokens) {
        return Err(e);
    }
    for row in &report.rows {
        let fields = [
            ("agreement", row.agreement),
            ("first_divergence", row.first_divergence),
            ("kl", row.kl),
            ("recall", row.recall),
            ("ttft_overhead", row.ttft_overhead),
        ];
        for (name, value) in fields {
            let field = format!("{name} of {} at budget {}", row.policy, row.budget);
            if let Some(e) = non_finite(field, value) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A budget on the log₂ x axis, which has no 0: budget 0 sits with budget 1.
fn x_of(budget: usize) -> f64 {
    budget.max(1) as f64
}

/// An axis range around the finite `values` with a margin that stops at `limits` (the data
/// itself always stays in range).
fn padded(values: &[f64], limits: (f64, f64)) -> (f64, f64) {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let margin = if hi > lo {
        (hi - lo) * 0.08
    } else {
        (hi.abs() * 0.1).max(0.5)
    };
    let (floor, ceiling) = (limits.0.min(lo), limits.1.max(hi));
    ((lo - margin).max(floor), (hi + margin).min(ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(policy: &str, budget: usize, agreement: f64, kl: f64) -> EvalRow {
        EvalRow {
            policy: policy.into(),
            budget,
            agreement,
            first_divergence: agreement * 64.0,
            kl,
            recall: 0.5 + agreement / 2.0,
            ttft_overhead: 0.01,
            accuracy: None,
            kept_like_f32: None,
        }
    }

    fn report(rows: Vec<EvalRow>) -> EvalReport {
        EvalReport {
            model: "Qwen3-0.6B".into(),
            prompts_file: "data/eval/prompts.jsonl".into(),
            num_prompts: 20,
            mean_prompt_tokens: 812.3,
            answer_tokens: 64,
            modules: vec![(
                "lookahead".into(),
                "lookahead-qwen3-0.6b.safetensors".into(),
            )],
            rows,
            oracle_recall: vec![(16, 0.75)],
            accuracy: Vec::new(),
        }
    }

    /// Three policies at two budgets; at 16 the best agreement (snapkv) and the lowest KL
    /// (lookahead) come from different policies.
    fn sample() -> EvalReport {
        report(vec![
            row("lookahead", 32, 0.9, 0.02),
            row("snapkv", 32, 0.85, 0.04),
            row("streaming_llm", 16, 0.3, 0.9),
            row("lookahead", 16, 0.7, 0.05),
            row("snapkv", 16, 0.8, 0.08),
            row("streaming_llm", 32, 0.5, 0.6),
        ])
    }

    #[test]
    fn the_table_formats_every_value_as_specified() {
        let mut rows = sample().rows;
        rows[0] = EvalRow {
            policy: "lookahead (no LoRA)".into(),
            budget: 32,
            agreement: 0.71234,
            first_divergence: 12.46,
            kl: 0.123456,
            recall: 0.8804,
            ttft_overhead: 0.0234,
            accuracy: None,
            kept_like_f32: None,
        };
        rows[1] = EvalRow {
            policy: "snapkv".into(),
            budget: 32,
            agreement: 0.85,
            first_divergence: 54.4,
            kl: 0.04,
            recall: 0.9261,
            ttft_overhead: -0.0104,
            accuracy: None,
            kept_like_f32: None,
        };
        let text = markdown(&report(rows));
        assert!(text.starts_with(
            "**Qwen3-0.6B**: 20 prompts from `data/eval/prompts.jsonl`, mean prompt length \
             812.3 tokens, 64 answer tokens each."
        ));
        assert!(text.contains("lookahead: `lookahead-qwen3-0.6b.safetensors`"));
        assert!(text.contains(
            "| policy | budget | agreement | first divergence | KL (nats/token) \
             | attention recall | TTFT overhead |"
        ));
        assert!(
            text.contains(
                "| lookahead (no LoRA) | 32 | 71.2 % | 12.5 | 0.1235 | 88.0 % | +2.3 % |"
            )
        );
        assert!(text.contains("| snapkv | 32 | 85.0 % | 54.4 | 0.0400 | 92.6 % | -1.0 % |"));
        assert!(text.contains("| streaming_llm | 16 | 30.0 % | 19.2 | 0.9000 | 65.0 % | +1.0 % |"));
    }

    #[test]
    fn rows_are_ordered_by_budget_then_by_first_appearance_of_the_policy() {
        let text = markdown(&sample());
        let order: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" % |") && l.matches('|').count() == 8)
            .map(|l| l.split(" | ").next().unwrap().trim_start_matches("| "))
            .collect();
        assert_eq!(
            order,
            [
                "lookahead",
                "snapkv",
                "streaming_llm",
                "lookahead",
                "snapkv",
                "streaming_llm"
            ]
        );
        let budgets_in_order: Vec<&str> = text
            .lines()
            .filter(|l| l.matches('|').count() == 8 && l.contains(" % |"))
            .map(|l| l.split(" | ").nth(1).unwrap())
            .collect();
        assert_eq!(budgets_in_order, ["16", "16", "16", "32", "32", "32"]);
    }

    #[test]
    fn the_best_policy_table_picks_the_highest_agreement_and_the_lowest_kl_per_budget() {
        let text = markdown(&sample());
        let best = text.split("Best policy per budget:").nth(1).unwrap();
        assert!(best.contains("| budget | highest agreement | lowest KL |"));
        assert!(best.contains("| 16 | snapkv (80.0 %) | lookahead (0.0500) |"));
        assert!(best.contains("| 32 | lookahead (90.0 %) | lookahead (0.0200) |"));
    }

    #[test]
    fn ties_go_to_the_earlier_policy_and_nan_never_wins() {
        let mut rows = vec![
            row("a", 16, 0.5, 0.1),
            row("b", 16, 0.5, 0.1),
            row("c", 16, f64::NAN, f64::NAN),
        ];
        rows.swap(0, 1);
        let text = markdown(&report(rows));
        assert!(text.contains("| 16 | b (50.0 %) | b (0.1000) |"));
    }

    #[test]
    fn json_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.json");
        let original = sample();
        write_json(&original, &path).unwrap();
        assert_eq!(read_json(&path).unwrap(), original);
    }

    #[test]
    fn a_non_finite_value_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.json");
        let mut bad = sample();
        bad.rows[3].kl = f64::INFINITY;
        let err = write_json(&bad, &path).unwrap_err();
        assert!(matches!(err, ReportError::NonFinite { .. }));
        assert_eq!(
            err.to_string(),
            "kl of lookahead at budget 16 is inf, which JSON cannot hold"
        );
        assert!(!path.exists());
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let err = read_json(Path::new("/nonexistent/eval.json")).unwrap_err();
        assert!(matches!(err, ReportError::Io { .. }));
        assert!(err.to_string().starts_with("/nonexistent/eval.json: "));
    }

    #[test]
    fn plot_all_writes_one_png_of_the_requested_size_per_metric() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let paths = plot_all(&sample(), &out).unwrap();
        let names: Vec<&str> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "eval-agreement.png",
                "eval-kl.png",
                "eval-recall.png",
                "eval-ttft.png"
            ]
        );
        for path in &paths {
            let bytes = fs::read(path).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
            let image = image::load_from_memory(&bytes).unwrap();
            assert_eq!((image.width(), image.height()), PLOT_SIZE);
        }
    }

    #[test]
    fn every_policy_is_drawn_in_its_own_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agreement.png");
        let report = sample();
        plot(&report, Metric::Agreement, &path).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        for (i, policy) in policy_order(&report.rows).iter().enumerate() {
            let RGBColor(r, g, b) = series_colour(i);
            let drawn = image.pixels().filter(|p| p.0 == [r, g, b]).count();
            assert!(drawn > 100, "{policy}: {drawn} pixels of its colour");
        }
    }

    #[test]
    fn a_full_cache_accuracy_run_has_no_policy_table_and_only_its_heat_map() {
        let mut full_only = report(vec![]);
        let expected = accuracy::Expected {
            task: "niah_single".into(),
            answers: vec!["42".into()],
            context_tokens: 1024,
            depth_percent: Some(30.0),
        };
        full_only.accuracy = vec![accuracy::outcome(
            &expected,
            accuracy::FULL_CACHE,
            None,
            "42",
        )];
        let text = markdown(&full_only);
        assert!(!text.contains("| policy | budget |"), "{text}");
        assert!(text.contains("| niah_single | 1.00 |"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let paths = plot_all(&full_only, dir.path()).unwrap();
        assert_eq!(paths, [dir.path().join("accuracy-depth-full.png")]);
    }

    #[test]
    fn an_empty_report_is_not_plotted() {
        let dir = tempfile::tempdir().unwrap();
        let err = plot(&report(vec![]), Metric::Kl, &dir.path().join("kl.png")).unwrap_err();
        assert!(matches!(err, ReportError::Plot { .. }));
    }

    #[test]
    fn axis_ranges_pad_the_data_but_stop_at_the_limits() {
        let close = |(lo, hi): (f64, f64), expected: (f64, f64)| {
            (lo - expected.0).abs() < 1e-9 && (hi - expected.1).abs() < 1e-9
        };
        assert!(close(padded(&[50.0, 100.0], (0.0, 100.0)), (46.0, 100.0)));
        assert!(close(
            padded(&[2.0, f64::NAN], (0.0, f64::INFINITY)),
            (1.5, 2.5)
        ));
        assert!(close(padded(&[150.0], (0.0, 100.0)), (135.0, 150.0)));
        assert!(close(padded(&[], (0.0, 100.0)), (0.0, 1.0)));
    }
}
