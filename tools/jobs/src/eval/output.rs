//! What the eval's writers share — the report's tables, JSON and plots ([`super::report`]) and the
//! accuracy tables and heat maps ([`super::accuracy`]): the error naming the file that failed, and
//! the plot font. Plot text uses the bundled DejaVu Sans (`tools/jobs/assets/fonts`), so plots
//! need no system fonts and look the same on every machine.

use std::path::PathBuf;
use std::sync::OnceLock;

use plotters::style::FontStyle;

/// Why a report could not be saved, loaded or drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an eval report: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// JSON has no NaN or infinity: serde_json would write `null`, which never reads back.
    #[error("{field} is {value}, which JSON cannot hold")]
    NonFinite { field: String, value: f64 },
    #[error("plotting {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

/// Font family name the bundled font is registered under.
pub(super) const FONT_FAMILY: &str = "sans-serif";
const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font with plotters once per process (its `ab_glyph` text renderer
/// reads no system fonts); false when the font did not parse.
pub(super) fn register_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok()
    })
}
