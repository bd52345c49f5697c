//! How commands print what they got: a table for people (default) or JSON for scripts
//! (`--output json`, the API's answer as it came).

use serde_json::Value;

/// The format chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and short summaries.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// A table of text cells printed with aligned columns.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text: headers, then rows, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = line(self.headers.iter().map(String::as_str).collect());
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// Prints a JSON value, pretty.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A JSON field as a table cell: strings without quotes, absent as "-".
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) if text.is_empty() => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: &Value) -> String {
    let Some(ms) = ms.as_i64().filter(|&ms| ms > 0) else {
        return "-".to_owned();
    };
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A share as a percentage with one decimal.
pub fn percent(share: &Value) -> String {
    share
        .as_f64()
        .map(|s| format!("{:.1}%", s * 100.0))
        .unwrap_or_else(|| "-".to_owned())
}

/// A text progress bar of `width` characters for `done` out of `total`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_cells_read_plainly() {
        let mut table = Table::new(&["ID", "STATE"]);
        table.row(vec!["rel_1".into(), cell(&json!("active"))]);
        table.row(vec!["rel_long_id".into(), cell(&json!(null))]);
        assert_eq!(
            table.render(),
            "ID           STATE\nrel_1        active\nrel_long_id  -"
        );
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!([])), "-");
        assert_eq!(cell(&json!(3)), "3");
    }

    #[test]
    fn times_percentages_and_bars() {
        assert_eq!(time(&json!(0)), "-");
        assert_eq!(time(&json!(86_400_000 + 3_723_000)), "1970-01-02 01:02:03");
        assert_eq!(time(&json!(1_796_601_600_000i64)), "2026-12-07 00:00:00");
        assert_eq!(time(&json!(951_782_400_000i64)), "2000-02-29 00:00:00");
        assert_eq!(percent(&json!(0.1234)), "12.3%");
        assert_eq!(bar(1, 4, 8), "[##......]");
        assert_eq!(bar(5, 4, 4), "[####]");
        assert_eq!(bar(0, 0, 3), "[...]");
    }
}
