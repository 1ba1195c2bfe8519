//! Tables found in an agent's output, for rich results (issue 18): the dashboard draws them as tables with a
//! bar chart of their first numeric column, and the CLI prints them aligned. Three shapes are read:
//!
//! - a Markdown pipe table (a header row, a `---` separator row, then rows);
//! - two or more consecutive `label: number [unit]` lines (a research step's figures, a benchmark's timings);
//! - JSON: an array of flat objects (one row each; columns in key order), or an object of two or more
//!   numbers.
//!
//! Bounded: at most [`MAX_TABLES`] tables of [`MAX_ROWS`] rows and [`MAX_COLUMNS`] columns each.

use serde::Serialize;
use serde_json::Value;

/// Most tables read from one output.
pub const MAX_TABLES: usize = 4;
/// Most rows kept of a table.
pub const MAX_ROWS: usize = 50;
/// Most columns kept of a table.
pub const MAX_COLUMNS: usize = 10;
/// Longest cell kept, in characters.
const MAX_CELL_CHARS: usize = 80;

/// A table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, each as many cells as there are columns.
    pub rows: Vec<Vec<String>>,
    /// For each column, whether every cell of it is a number (a unit after it allowed).
    pub numeric: Vec<bool>,
}

impl Table {
    fn new(columns: Vec<String>, rows: Vec<Vec<String>>) -> Option<Table> {
        let width = columns.len().min(MAX_COLUMNS);
        if width == 0 || rows.is_empty() {
            return None;
        }
        let cell = |text: &str| super::shorten(text.trim(), MAX_CELL_CHARS);
        let columns: Vec<String> = columns.iter().take(width).map(|c| cell(c)).collect();
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .take(MAX_ROWS)
            .map(|row| {
                let mut row: Vec<String> = row.iter().take(width).map(|c| cell(c)).collect();
                row.resize(width, String::new());
                row
            })
            .collect();
        let numeric = (0..width)
            .map(|column| rows.iter().all(|row| number_in(&row[column]).is_some()))
            .collect();
        Some(Table {
            columns,
            rows,
            numeric,
        })
    }
}

/// The number a cell starts with (`12.5 ms`, `-3`, `40%`), if it is one.
pub fn number_in(cell: &str) -> Option<f64> {
    let cell = cell.trim();
    let end = cell
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0)))
        .map_or(cell.len(), |(i, _)| i);
    let (number, rest) = cell.split_at(end);
    let rest = rest.trim();
    // A unit may follow (`ms`, `%`, `km2`, `req/s`, `million`), nothing else.
    let unit_start = rest
        .chars()
        .next()
        .is_none_or(|c| c.is_alphabetic() || c == '%' || c == '/');
    if !unit_start
        || rest
            .chars()
            .any(|c| !(c.is_alphanumeric() || matches!(c, '%' | '/' | ' ' | '²' | '³' | '·')))
    {
        return None;
    }
    number.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// The cells of a Markdown table row, or `None` when the line is not one.
fn pipe_cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    if !line.starts_with('|') || !line.ends_with('|') || line.len() < 3 {
        return None;
    }
    Some(
        line[1..line.len() - 1]
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect(),
    )
}

fn is_separator(cells: &[String]) -> bool {
    cells.iter().all(|cell| {
        let cell = cell.trim();
        !cell.is_empty() && cell.chars().all(|c| c == '-' || c == ':') && cell.contains('-')
    })
}

/// `label: number [unit]`, or `- label: number` (a list item).
fn figure(line: &str) -> Option<(String, String)> {
    let line = line.trim().trim_start_matches(['-', '*', '•']).trim();
    let (label, value) = line.rsplit_once(':')?;
    let (label, value) = (label.trim(), value.trim());
    if label.is_empty() || label.chars().count() > 60 || number_in(value).is_none() {
        return None;
    }
    Some((label.to_owned(), value.to_owned()))
}

/// The tables in `text` (see the module's docs), in order.
pub fn tables_in(text: &str) -> Vec<Table> {
    if let Ok(value) = serde_json::from_str::<Value>(text.trim()) {
        return json_table(&value).into_iter().collect();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut tables = Vec::new();
    let mut i = 0;
    while i < lines.len() && tables.len() < MAX_TABLES {
        // A pipe table: a header, a separator, then rows.
        if let (Some(header), Some(separator)) = (
            pipe_cells(lines[i]),
            lines.get(i + 1).and_then(|line| pipe_cells(line)),
        ) {
            if is_separator(&separator) {
                let mut rows = Vec::new();
                let mut j = i + 2;
                while let Some(row) = lines.get(j).and_then(|line| pipe_cells(line)) {
                    rows.push(row);
                    j += 1;
                }
                if let Some(table) = Table::new(header, rows) {
                    tables.push(table);
                }
                i = j;
                continue;
            }
        }
        // Figures: two or more `label: number` lines in a row.
        let mut figures = Vec::new();
        let mut j = i;
        while let Some(found) = lines.get(j).and_then(|line| figure(line)) {
            figures.push(found);
            j += 1;
        }
        if figures.len() >= 2 {
            let rows = figures
                .into_iter()
                .map(|(label, value)| vec![label, value])
                .collect();
            if let Some(table) = Table::new(vec!["item".to_owned(), "value".to_owned()], rows) {
                tables.push(table);
            }
            i = j;
            continue;
        }
        i += 1;
    }
    tables
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A JSON array of flat objects, or an object of two or more numbers, as a table.
fn json_table(value: &Value) -> Option<Table> {
    match value {
        Value::Array(items) if !items.is_empty() => {
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                let object = item.as_object()?;
                for (key, cell) in object {
                    scalar(cell)?;
                    if !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
            let rows = items
                .iter()
                .filter_map(Value::as_object)
                .map(|object| {
                    columns
                        .iter()
                        .map(|column| object.get(column).and_then(scalar).unwrap_or_default())
                        .collect()
                })
                .collect();
            Table::new(columns, rows)
        }
        Value::Object(object) => {
            let rows: Vec<Vec<String>> = object
                .iter()
                .filter(|(_, cell)| cell.is_number())
                .map(|(key, cell)| vec![key.clone(), cell.to_string()])
                .collect();
            (rows.len() >= 2)
                .then(|| Table::new(vec!["item".to_owned(), "value".to_owned()], rows))
                .flatten()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_markdown_table_is_read_with_its_numeric_columns() {
        let text = "Timings:\n\n| function | calls | time |\n|---|---:|---|\n| add | 2 | 1.5 ms |\n| mul | 3 | 0.4 ms |\n\nDone.";
        let tables = tables_in(text);
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].columns, vec!["function", "calls", "time"]);
        assert_eq!(tables[0].rows[1], vec!["mul", "3", "0.4 ms"]);
        assert_eq!(tables[0].numeric, vec![false, true, true]);
    }

    #[test]
    fn figures_lines_and_json_become_tables() {
        let figures =
            tables_in("Paris facts:\n- population: 2.1 million\n- area: 105 km2\nThat is all.");
        assert_eq!(figures.len(), 1);
        assert_eq!(
            figures[0].rows,
            vec![vec!["population", "2.1 million"], vec!["area", "105 km2"]]
        );
        assert!(
            tables_in("Answer: 42").is_empty(),
            "one figure is not a table"
        );
        let json = tables_in(
            r#"[{"name": "sort", "ms": 1.2}, {"name": "search", "ms": 0.3, "note": "warm"}]"#,
        );
        // Columns in key order (JSON objects are read as maps).
        assert_eq!(json[0].columns, vec!["ms", "name", "note"]);
        assert_eq!(json[0].rows[0], vec!["1.2", "sort", ""]);
        assert_eq!(json[0].numeric, vec![true, false, false]);
        let object = tables_in(r#"{"p50": 1.5, "p99": 4.0, "unit": "ms"}"#);
        assert_eq!(object[0].rows.len(), 2);
        assert!(tables_in(r#"{"code": "def f(): pass", "test": "assert f() is None"}"#).is_empty());
    }

    #[test]
    fn numbers_may_carry_a_unit_and_nothing_else() {
        assert_eq!(number_in("12.5 ms"), Some(12.5));
        assert_eq!(number_in("-3"), Some(-3.0));
        assert_eq!(number_in("40%"), Some(40.0));
        assert_eq!(number_in("3 (approx.)"), None);
        assert_eq!(number_in("abc"), None);
    }
}
