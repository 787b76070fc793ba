//! Exact-answer accuracy for prompts that carry their expected answer (retrieval tasks such as
//! RULER's): every greedy answer is scored as right when it contains every expected value, in any
//! order (RULER's `string_match_all`, without partial credit), then
//! counted per task × policy × budget, per task × context length for the full cache, and per
//! needle depth for the heat maps that show *where* in a long prompt a policy loses the fact.
//!
//! Knows nothing of models: it scores decoded answers measured elsewhere and formats the counts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::output::{FONT_FAMILY, ReportError, register_font};

/// Policy label of the full-cache reference in outcomes, tables and plots.
pub const FULL_CACHE: &str = "full cache";

/// What a prompt should be answered with, from its prompts-file line.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Task name (`niah_single`, `vt`, ...); prompts without one are grouped as `-`.
    pub task: String,
    /// What a right greedy answer contains, all of it in any order (RULER's `string_match_all`:
    /// the values of a multi-value question; a single answer otherwise).
    pub answers: Vec<String>,
    /// Context length the prompt was built for (the generator's target), for the full-cache
    /// table; the prompt's own token count when the file does not say.
    pub context_tokens: usize,
    /// Depth of the deciding needle in the prompt, 0 (start) to 100 (end), when known.
    pub depth_percent: Option<f64>,
}

/// One greedy answer scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerOutcome {
    pub task: String,
    pub context_tokens: usize,
    pub depth_percent: Option<f64>,
    /// [`FULL_CACHE`] or the policy label.
    pub policy: String,
    /// `None` for the full cache.
    pub budget: Option<usize>,
    pub correct: bool,
}

/// Whether a greedy answer counts as right: it contains every expected string verbatim.
pub fn is_correct(greedy: &str, expected: &[String]) -> bool {
    expected.iter().all(|e| greedy.contains(e.as_str()))
}

/// Scores one greedy answer to the prompt described by `expected`.
pub fn outcome(
    expected: &Expected,
    policy: &str,
    budget: Option<usize>,
    greedy: &str,
) -> AnswerOutcome {
    AnswerOutcome {
        task: expected.task.clone(),
        context_tokens: expected.context_tokens,
        depth_percent: expected.depth_percent,
        policy: policy.to_string(),
        budget,
        correct: is_correct(greedy, &expected.answers),
    }
}

/// Right answers over all answers among `outcomes` that pass `keep`; `None` when none does.
fn fraction<'a>(
    outcomes: &'a [AnswerOutcome],
    keep: impl Fn(&'a AnswerOutcome) -> bool,
) -> Option<(f64, usize)> {
    let (right, total) = outcomes
        .iter()
        .filter(|o| keep(o))
        .fold((0, 0), |(r, t), o| (r + usize::from(o.correct), t + 1));
    (total > 0).then(|| (right as f64 / total as f64, total))
}

/// Accuracy of `policy` at `budget` (`None`: the full cache) over every task; `None` when it
/// answered nothing.
pub fn of_policy(outcomes: &[AnswerOutcome], policy: &str, budget: Option<usize>) -> Option<f64> {
    fraction(outcomes, |o| o.policy == policy && o.budget == budget).map(|(acc, _)| acc)
}

/// Distinct values of `key`, sorted.
fn distinct<T: Ord>(outcomes: &[AnswerOutcome], key: impl Fn(&AnswerOutcome) -> T) -> Vec<T> {
    outcomes
        .iter()
        .map(key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Policies other than the full cache, in order of first appearance.
fn evicting_policies(outcomes: &[AnswerOutcome]) -> Vec<&str> {
    let mut policies: Vec<&str> = Vec::new();
    for o in outcomes.iter().filter(|o| o.budget.is_some()) {
        if !policies.contains(&o.policy.as_str()) {
            policies.push(&o.policy);
        }
    }
    policies
}

fn cell(value: Option<(f64, usize)>) -> String {
    value.map_or("-".into(), |(acc, _)| format!("{acc:.2}"))
}

/// Markdown: the full cache's accuracy per task × context length, then per task (and over all
/// tasks) each policy's accuracy at every budget next to the full cache's; the all-tasks table
/// also gives each cell as a share of the full cache's accuracy.
pub fn markdown(outcomes: &[AnswerOutcome]) -> String {
    let tasks = distinct(outcomes, |o| o.task.clone());
    let lengths = distinct(outcomes, |o| o.context_tokens);
    let budgets = budgets_of(outcomes);
    let policies = evicting_policies(outcomes);
    let full = |o: &AnswerOutcome| o.budget.is_none();

    let mut out = String::from(
        "Exact-answer accuracy (a right greedy answer contains every expected value, in any order).\n\n",
    );
    out.push_str("Full cache, task × context length:\n\n");
    out.push_str(&table_header("task", &lengths));
    for task in &tasks {
        out.push_str(&format!("| {task} |"));
        for &length in &lengths {
            let value = fraction(outcomes, |o| {
                full(o) && &o.task == task && o.context_tokens == length
            });
            out.push_str(&format!(" {} |", cell(value)));
        }
        out.push('\n');
    }
    if policies.is_empty() {
        return out;
    }

    let groups = tasks
        .iter()
        .map(|t| (t.as_str(), Some(t.as_str())))
        .chain([("all tasks", None)]);
    for (title, task) in groups {
        let in_group = |o: &AnswerOutcome| task.is_none_or(|t| o.task == t);
        let full_acc = fraction(outcomes, |o| full(o) && in_group(o));
        let n = full_acc.map_or(0, |(_, n)| n);
        out.push_str(&format!(
            "\n**{title}** (full cache {}, {n} prompts):\n\n",
            cell(full_acc)
        ));
        out.push_str(&table_header("policy", &budgets));
        for policy in &policies {
            out.push_str(&format!("| {policy} |"));
            for &budget in &budgets {
                let value = fraction(outcomes, |o| {
                    o.policy == *policy && o.budget == Some(budget) && in_group(o)
                });
                let share = match (value, full_acc, task) {
                    (Some((acc, _)), Some((reference, _)), None) if reference > 0.0 => {
                        format!(" ({:.0} %)", acc / reference * 100.0)
                    }
                    _ => String::new(),
                };
                out.push_str(&format!(" {}{share} |", cell(value)));
            }
            out.push('\n');
        }
    }
    out
}

/// The header and alignment rows of a Markdown table: a text column, then one numeric column
/// per value.
fn table_header(first: &str, columns: &[usize]) -> String {
    let names: String = columns.iter().map(|c| format!(" {c} |")).collect();
    format!(
        "| {first} |{names}\n|---|{}\n",
        "---:|".repeat(columns.len())
    )
}

/// Distinct budgets of the evicting policies, ascending.
fn budgets_of(outcomes: &[AnswerOutcome]) -> Vec<usize> {
    distinct(outcomes, |o| o.budget)
        .into_iter()
        .flatten()
        .collect()
}

/// Depth bins of the heat maps: needle depth rounded to the nearest 10 %.
const DEPTH_BINS: [u32; 11] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

fn depth_bin(depth_percent: f64) -> u32 {
    ((depth_percent.clamp(0.0, 100.0) / 10.0).round() as u32) * 10
}

/// One heat map row: its label and the outcomes it covers.
struct HeatRow<'a> {
    label: String,
    outcomes: Vec<&'a AnswerOutcome>,
}

const HEAT_SIZE: (u32, u32) = (900, 420);

/// Draws accuracy vs needle depth as NIAH-style heat maps into `dir`: `accuracy-depth-full.png`
/// (one row per context length) and `accuracy-depth-<policy>.png` per policy (one row per
/// budget); cells are coloured red (0) to green (1) and carry their value. Outcomes without a
/// depth are left out; no file is written when none has one. Returns the paths written.
pub fn plot_depth_heat_maps(
    outcomes: &[AnswerOutcome],
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    let with_depth: Vec<&AnswerOutcome> = outcomes
        .iter()
        .filter(|o| o.depth_percent.is_some())
        .collect();
    if with_depth.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut maps: Vec<(String, String, Vec<HeatRow>)> = Vec::new();
    let full: Vec<&AnswerOutcome> = with_depth
        .iter()
        .copied()
        .filter(|o| o.budget.is_none())
        .collect();
    let lengths = distinct(outcomes, |o| o.context_tokens);
    let rows = lengths
        .iter()
        .map(|&length| HeatRow {
            label: format!("{length} tokens"),
            outcomes: full
                .iter()
                .copied()
                .filter(|o| o.context_tokens == length)
                .collect(),
        })
        .collect();
    maps.push(("full".to_string(), FULL_CACHE.to_string(), rows));
    let budgets = budgets_of(outcomes);
    for policy in evicting_policies(outcomes) {
        let rows = budgets
            .iter()
            .map(|&budget| HeatRow {
                label: format!("budget {budget}"),
                outcomes: with_depth
                    .iter()
                    .copied()
                    .filter(|o| o.policy == policy && o.budget == Some(budget))
                    .collect(),
            })
            .collect();
        let file = policy
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        maps.push((file, policy.to_string(), rows));
    }

    let mut paths = Vec::new();
    for (file, title, rows) in maps {
        let path = dir.join(format!("accuracy-depth-{file}.png"));
        let fail = |message: String| ReportError::Plot {
            path: path.clone(),
            message,
        };
        if !register_font() {
            return Err(fail("the bundled DejaVuSans.ttf did not parse".into()));
        }
        draw_heat_map(&title, &rows, &path).map_err(|e| fail(e.to_string()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Red (0) through yellow to green (1).
fn heat_colour(accuracy: f64) -> RGBColor {
    let a = accuracy.clamp(0.0, 1.0);
    let (r, g) = if a < 0.5 {
        (220.0, 60.0 + 2.0 * a * 160.0)
    } else {
        (
            220.0 - 2.0 * (a - 0.5) * 180.0,
            220.0 - 2.0 * (a - 0.5) * 40.0,
        )
    };
    RGBColor(r as u8, g as u8, 60)
}

fn draw_heat_map<'a>(
    title: &str,
    rows: &[HeatRow],
    path: &'a Path,
) -> DrawResult<(), BitMapBackend<'a>> {
    let root = BitMapBackend::new(path, HEAT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("Exact-answer accuracy vs needle depth — {title}");
    let root = root
        .margin(10, 10, 10, 10)
        .titled(&caption, (FONT_FAMILY, 20))?;
    let n_rows = rows.len();
    // the depth axis is segmented (labels at column centres; plotters' integer ranges include
    // their end, so `0..n - 1` has n segments); rows are a float axis labelled by hand, which
    // also works for a single row
    let mut chart = ChartBuilder::on(&root)
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .build_cartesian_2d(
            (0..DEPTH_BINS.len() - 1).into_segmented(),
            0.0..n_rows as f64,
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(DEPTH_BINS.len())
        .y_labels(0)
        .x_label_formatter(&|v| match *v {
            SegmentValue::CenterOf(i) => DEPTH_BINS.get(i).map_or(String::new(), |d| d.to_string()),
            _ => String::new(),
        })
        .x_desc("needle depth (% of the prompt)")
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()?;
    let base = root.get_base_pixel();
    let label_style = (FONT_FAMILY, 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        // row 0 at the top, like the tables
        let y = n_rows - 1 - r;
        let (px, py) = chart.backend_coord(&(SegmentValue::Exact(0), y as f64 + 0.5));
        root.draw(&Text::new(
            row.label.clone(),
            (px - base.0 - 8, py - base.1),
            label_style.clone(),
        ))?;
        for (x, &bin) in DEPTH_BINS.iter().enumerate() {
            let in_bin: Vec<&AnswerOutcome> = row
                .outcomes
                .iter()
                .copied()
                .filter(|o| o.depth_percent.map(depth_bin) == Some(bin))
                .collect();
            if in_bin.is_empty() {
                continue;
            }
            let right = in_bin.iter().filter(|o| o.correct).count();
            let accuracy = right as f64 / in_bin.len() as f64;
            let y = y as f64;
            chart.draw_series([Rectangle::new(
                [
                    (SegmentValue::Exact(x), y),
                    (SegmentValue::Exact(x + 1), y + 1.0),
                ],
                heat_colour(accuracy).filled(),
            )])?;
            let style = (FONT_FAMILY, 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series([Text::new(
                format!("{accuracy:.2}"),
                (SegmentValue::CenterOf(x), y + 0.5),
                style,
            )])?;
        }
    }
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(task: &str, answer: &str, length: usize, depth: f64) -> Expected {
        Expected {
            task: task.into(),
            answers: vec![answer.into()],
            context_tokens: length,
            depth_percent: Some(depth),
        }
    }

    fn sample() -> Vec<AnswerOutcome> {
        let single = expected("niah_single", "482719", 2048, 12.0);
        let vt = expected("vt", "VAR B = VAR A = 913883", 2048, 88.0);
        let short = expected("niah_single", "111111", 1024, 51.0);
        vec![
            outcome(&single, FULL_CACHE, None, "482719</s>"),
            outcome(&vt, FULL_CACHE, None, "VAR B = VAR A = 913883"),
            outcome(&short, FULL_CACHE, None, "111112"),
            outcome(&single, "snapkv", Some(64), "48271"),
            outcome(&vt, "snapkv", Some(64), "VAR B = VAR A = 913883."),
            outcome(&single, "snapkv", Some(128), "the number is 482719"),
            outcome(&vt, "snapkv", Some(128), "VAR B = VAR Q = 913883"),
            outcome(&short, "snapkv", Some(64), "111111"),
            outcome(&short, "snapkv", Some(128), "111111"),
        ]
    }

    #[test]
    fn an_answer_is_right_when_it_contains_every_expected_string_verbatim() {
        let one = |s: &str| vec![s.to_string()];
        assert!(is_correct("482719", &one("482719")));
        assert!(is_correct(" 482719.</s>", &one("482719")));
        assert!(!is_correct("48271", &one("482719")));
        assert!(!is_correct("var b = var a = 1", &one("VAR B = VAR A = 1")));
        let values = vec!["111".to_string(), "222".to_string()];
        assert!(is_correct("222, 111", &values));
        assert!(!is_correct("222, 333", &values));
    }

    #[test]
    fn tables_count_per_task_length_policy_and_budget() {
        let text = markdown(&sample());
        assert!(text.contains("| task | 1024 | 2048 |"), "{text}");
        assert!(text.contains("| niah_single | 0.00 | 1.00 |"), "{text}");
        assert!(text.contains("| vt | - | 1.00 |"), "{text}");
        assert!(
            text.contains("**niah_single** (full cache 0.50, 2 prompts)"),
            "{text}"
        );
        assert!(text.contains("| snapkv | 0.50 | 1.00 |"), "{text}");
        assert!(
            text.contains("**vt** (full cache 1.00, 1 prompts)"),
            "{text}"
        );
        assert!(text.contains("| snapkv | 1.00 | 0.00 |"), "{text}");
        // all tasks: full 2/3; snapkv 2/3 at 64 (100 % of full), 2/3 at 128
        assert!(
            text.contains("**all tasks** (full cache 0.67, 3 prompts)"),
            "{text}"
        );
        assert!(
            text.contains("| snapkv | 0.67 (100 %) | 0.67 (100 %) |"),
            "{text}"
        );
    }

    #[test]
    fn without_evicting_policies_only_the_full_cache_table_is_written() {
        let full_only: Vec<AnswerOutcome> = sample()
            .into_iter()
            .filter(|o| o.budget.is_none())
            .collect();
        let text = markdown(&full_only);
        assert!(text.contains("| niah_single | 0.00 | 1.00 |"));
        assert!(!text.contains("**all tasks**"));
    }

    #[test]
    fn depths_fall_into_the_nearest_ten_percent() {
        assert_eq!(depth_bin(0.0), 0);
        assert_eq!(depth_bin(4.9), 0);
        assert_eq!(depth_bin(65.01), 70);
        assert_eq!(depth_bin(100.0), 100);
        assert_eq!(depth_bin(-3.0), 0);
    }

    #[test]
    fn the_heat_colour_runs_from_red_to_green() {
        let RGBColor(r0, g0, _) = heat_colour(0.0);
        let RGBColor(r1, g1, _) = heat_colour(1.0);
        assert!(r0 > g0 && g1 > r1, "{r0},{g0} -> {r1},{g1}");
    }

    #[test]
    fn one_heat_map_per_policy_and_one_for_the_full_cache() {
        let dir = tempfile::tempdir().unwrap();
        let paths = plot_depth_heat_maps(&sample(), dir.path()).unwrap();
        let expected = ["accuracy-depth-full.png", "accuracy-depth-snapkv.png"];
        assert_eq!(paths, expected.map(|name| dir.path().join(name)));
        let image = image::open(&paths[1]).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), HEAT_SIZE);
        let RGBColor(r, g, b) = heat_colour(1.0);
        let green = image.pixels().filter(|p| p.0 == [r, g, b]).count();
        assert!(green > 500, "{green} pixels of a right cell");
    }

    #[test]
    fn outcomes_without_depths_draw_nothing() {
        let mut outcomes = sample();
        for o in &mut outcomes {
            o.depth_percent = None;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(
            plot_depth_heat_maps(&outcomes, dir.path())
                .unwrap()
                .is_empty()
        );
    }
}
