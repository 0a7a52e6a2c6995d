//! Tables in the style the original calicoctl printed (prettytable's default borders, cells
//! centred unless asked otherwise, multi-line cells).

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    left_aligned: bool,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            left_aligned: false,
        }
    }

    pub fn left_aligned(mut self) -> Self {
        self.left_aligned = true;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|c| {
                std::iter::once(&self.headers[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .flat_map(|cell| cell.lines())
                    .map(|line| line.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn pad(&self, text: &str, width: usize, left: bool) -> String {
        let gap = width - text.chars().count();
        let before = if left { 0 } else { gap / 2 };
        format!(" {}{text}{} ", " ".repeat(before), " ".repeat(gap - before))
    }

    fn render_row(&self, out: &mut String, cells: &[String], widths: &[usize], left: bool) {
        let height = cells
            .iter()
            .map(|c| c.lines().count().max(1))
            .max()
            .unwrap_or(1);
        for line in 0..height {
            out.push('|');
            for (cell, width) in cells.iter().zip(widths) {
                let text = cell.lines().nth(line).unwrap_or("");
                out.push_str(&self.pad(text, *width, left));
                out.push('|');
            }
            out.push('\n');
        }
    }

    pub fn render(&self) -> String {
        let widths = self.widths();
        let border: String = widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .fold("+".to_string(), |acc, dashes| acc + &dashes + "+");
        let mut out = format!("{border}\n");
        self.render_row(&mut out, &self.headers, &widths, self.left_aligned);
        out.push_str(&border);
        out.push('\n');
        for row in &self.rows {
            self.render_row(&mut out, row, &widths, self.left_aligned);
        }
        out.push_str(&border);
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_original() {
        let mut table = Table::new(&["Name"]);
        table.row(vec!["PROF_A_C_E".into()]);
        table.row(vec!["PROF_B".into()]);
        assert_eq!(
            table.render(),
            "+------------+\n|    Name    |\n+------------+\n| PROF_A_C_E |\n|   PROF_B   |\n+------------+\n"
        );
    }

    #[test]
    fn multi_line_cells_and_left_alignment() {
        let mut table = Table::new(&["A", "Addresses"]).left_aligned();
        table.row(vec!["x".into(), "10.0.0.1/32\nfd00::1/128".into()]);
        assert_eq!(
            table.render(),
            "+---+-------------+\n| A | Addresses   |\n+---+-------------+\n| x | 10.0.0.1/32 |\n|   | fd00::1/128 |\n+---+-------------+\n"
        );
    }
}
