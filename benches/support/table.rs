//! The summary table every benchmark ends with: one row per figure, its target, and PASS or MISS decided from
//! the measurement itself, so the figures a reader quotes come from one place, the benchmark's own output.
//!
//! Included by each benchmark with `#[path]`; it uses only std.

#![allow(dead_code)]

/// Rows gathered while a benchmark runs, printed at its end.
#[derive(Default)]
pub struct Table {
    lines: Vec<Line>,
}

enum Line {
    Section(String),
    Row { what: String, value: String, target: Option<(String, bool)> },
    Note(String),
}

impl Table {
    /// Start a section (a scenario).
    pub fn section(&mut self, title: &str) {
        self.lines.push(Line::Section(title.to_string()));
    }

    /// A figure with a target; `pass` must be computed from the measured value.
    pub fn row(&mut self, what: &str, value: String, target: String, pass: bool) {
        self.lines.push(Line::Row { what: what.to_string(), value, target: Some((target, pass)) });
    }

    /// A figure without a target.
    pub fn info(&mut self, what: &str, value: String) {
        self.lines.push(Line::Row { what: what.to_string(), value, target: None });
    }

    /// A line of explanation under the current section.
    pub fn note(&mut self, text: &str) {
        self.lines.push(Line::Note(text.to_string()));
    }

    /// How many rows passed and missed their targets.
    pub fn counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for line in &self.lines {
            if let Line::Row { target: Some((_, pass)), .. } = line {
                if *pass {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        counts
    }

    /// Print the table and the PASS/MISS count.
    pub fn print(&self) {
        println!();
        println!("{:<44} {:<58} {:<20} result", "figure", "measured (one run)", "target");
        println!("{}", "-".repeat(130));
        for line in &self.lines {
            match line {
                Line::Section(t) => println!("\n{t}"),
                Line::Note(t) => println!("  {t}"),
                Line::Row { what, value, target } => {
                    let (target, result) = match target {
                        Some((t, true)) => (t.as_str(), "PASS"),
                        Some((t, false)) => (t.as_str(), "MISS"),
                        None => ("", ""),
                    };
                    println!("  {what:<42} {value:<58} {target:<20} {result}");
                }
            }
        }
        let (passed, missed) = self.counts();
        println!();
        println!("{passed} PASS, {missed} MISS");
    }
}

/// A count with thousands separators.
pub fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
