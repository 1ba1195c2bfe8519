//! Aligned text tables for the terminal: a header, rows, each column as wide as its widest cell, numbers
//! (cells that parse as one) aligned right, the rest left.

/// Renders `header` and `rows` as an aligned table, one line per row, columns two spaces apart.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let numeric = |column: usize| {
        rows.iter().all(|row| {
            row.get(column).is_none_or(|cell| {
                let cell = cell.trim_end_matches('%').trim_end_matches(" s");
                cell == "–" || cell.parse::<f64>().is_ok()
            })
        }) && !rows.is_empty()
    };
    let right: Vec<bool> = (0..columns).map(numeric).collect();
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::new();
        for (column, cell) in cells.iter().enumerate().take(columns) {
            let pad = widths[column].saturating_sub(cell.chars().count());
            if column > 0 {
                text.push_str("  ");
            }
            if right[column] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if column + 1 < columns {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|width| "─".repeat(*width))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let table = render(
            &["variant", "pass rate", "p50"],
            &[
                vec!["fixed".into(), "100.0%".into(), "0.41 s".into()],
                vec!["a much longer name".into(), "0.0%".into(), "12.20 s".into()],
            ],
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "variant             pass rate      p50");
        assert_eq!(lines[2], "fixed                  100.0%   0.41 s");
        assert_eq!(lines[3], "a much longer name       0.0%  12.20 s");
        assert!(lines[1].starts_with("──────"));
    }
}
