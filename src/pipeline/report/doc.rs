//! One document written twice: markdown and HTML, section by section.

use std::fmt::Write as _;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A table cell for markdown: one line, pipes escaped.
fn md_cell(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}

/// A table: a header row and rows of text cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn md(&self) -> String {
        let line = |cells: &[String]| {
            format!(
                "| {} |\n",
                cells
                    .iter()
                    .map(|c| md_cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        let mut s = line(&self.header);
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    pub fn html(&self) -> String {
        let row = |cells: &[String], tag: &str| {
            format!(
                "<tr>{}</tr>",
                cells
                    .iter()
                    .map(|c| format!("<{tag}>{}</{tag}>", esc(c)))
                    .collect::<String>()
            )
        };
        let mut s = String::from("<table>");
        s.push_str(&row(&self.header, "th"));
        for r in &self.rows {
            s.push_str(&row(r, "td"));
        }
        s.push_str("</table>");
        s
    }
}

/// The report being written: `md` and `html` (body only until [`Doc::finish_html`]).
#[derive(Debug, Default)]
pub struct Doc {
    pub md: String,
    pub html: String,
}

impl Doc {
    pub fn h1(&mut self, t: &str) {
        let _ = writeln!(self.md, "# {t}\n");
        let _ = write!(self.html, "<h1>{}</h1>", esc(t));
    }

    pub fn h2(&mut self, t: &str) {
        let _ = writeln!(self.md, "## {t}\n");
        let _ = write!(self.html, "<h2>{}</h2>", esc(t));
    }

    /// A paragraph of plain text.
    pub fn p(&mut self, t: &str) {
        let _ = writeln!(self.md, "{t}\n");
        let _ = write!(self.html, "<p>{}</p>", esc(t));
    }

    /// A paragraph in bold (the verdict's headline).
    pub fn strong(&mut self, t: &str) {
        let _ = writeln!(self.md, "**{t}**\n");
        let _ = write!(self.html, "<p><b>{}</b></p>", esc(t));
    }

    pub fn list(&mut self, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.html.push_str("<ul>");
        for i in items {
            let _ = writeln!(self.md, "- {i}");
            let _ = write!(self.html, "<li>{}</li>", esc(i));
        }
        self.md.push('\n');
        self.html.push_str("</ul>");
    }

    /// A checklist: (status label, CSS class, text) per item; the label in bold.
    pub fn checklist(&mut self, items: &[(&str, &str, String)]) {
        self.html.push_str("<ul>");
        for (label, class, text) in items {
            let _ = writeln!(self.md, "- **{label}**: {text}");
            let _ = write!(
                self.html,
                "<li><b class=\"{class}\">{}</b>: {}</li>",
                esc(label),
                esc(text)
            );
        }
        self.md.push('\n');
        self.html.push_str("</ul>");
    }

    pub fn table(&mut self, t: &Table) {
        let _ = writeln!(self.md, "{}", t.md());
        self.html.push_str(&t.html());
    }

    /// A dialogue: a heading line, then (speaker, text) turns (quoted in markdown, a
    /// preformatted block in HTML).
    pub fn dialogue(&mut self, head: &str, turns: &[(&str, &str)]) {
        let _ = writeln!(self.md, "**{head}**\n");
        let _ = write!(self.html, "<p><b>{}</b></p><pre>", esc(head));
        for (who, text) in turns {
            let _ = writeln!(self.md, "> {who}: {}  ", text.replace('\n', "\n> "));
            let _ = writeln!(self.html, "{who}: {}", esc(text));
        }
        self.md.push('\n');
        self.html.push_str("</pre>");
    }

    pub fn md_only(&mut self, s: &str) {
        self.md.push_str(s);
    }

    pub fn html_only(&mut self, s: &str) {
        self.html.push_str(s);
    }

    /// The whole HTML page.
    pub fn finish_html(&self) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pinpoint report</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}.met{{color:#2ca02c}}.notmet{{color:#d62728}}.nm{{color:#7f7f7f}}</style></head><body>{}</body></html>",
            self.html
        )
    }
}
