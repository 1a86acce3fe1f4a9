//! `-o table|json|yaml` for commands that print records.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

static COLOR: AtomicBool = AtomicBool::new(true);

/// Records `--no-color` / `NO_COLOR` (https://no-color.org) once at start-up.
pub fn set_color_allowed(allowed: bool) {
    COLOR.store(allowed, Ordering::Relaxed);
}

/// Whether the user allows colours at all (each sink also needs a terminal).
pub fn color_allowed() -> bool {
    COLOR.load(Ordering::Relaxed)
}

/// Colours in what goes to stdout: allowed, and a person is reading it.
pub fn color_on_stdout() -> bool {
    color_allowed() && std::io::stdout().is_terminal()
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Pretty-printed JSON; field names and order are stable.
    Json,
    /// YAML with the same structure as the JSON.
    Yaml,
}

/// Renders `value` in `format`; `table` builds the human table from the same data.
pub fn render<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> comfy_table::Table,
) -> String {
    match format {
        Format::Table => format!("{}\n", table()),
        // Serialising plain structs of strings and numbers cannot fail.
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(value).expect("serialisable")
        ),
        Format::Yaml => serde_yaml::to_string(value).expect("serialisable"),
    }
}

/// A table with a header and no styling that depends on the terminal.
pub fn table(header: impl Into<comfy_table::Row>) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(header);
    t
}

/// `12.3 MiB`-style sizes for tables (JSON and YAML carry bytes).
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds for report lines.
pub fn millis(d: std::time::Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(8192), "8.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
    }
}
