//! Progress bars of the long jobs (benchmarks, training, evaluation).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps on stderr (hidden when stderr is not a terminal), so stdout stays the
/// report; `{msg}` shows what the job sets with `set_message` (e.g. the current loss).
pub fn bar(label: &str, len: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}) {msg}",
    )
    .expect("the template is a valid constant");
    ProgressBar::new(len as u64)
        .with_style(style)
        .with_prefix(label.to_owned())
}
