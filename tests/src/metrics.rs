//! A Prometheus text-format scrape, enough to read one series' value.

/// One scrape of `GET /metrics`: `(series, value)` pairs in order, comments dropped.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `(series, value)`, where series is the name with its labels as printed
    /// (`herald_sessions{dialect="v1"}`).
    samples: Vec<(String, f64)>,
}

impl Metrics {
    /// Parses the text exposition format; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                // The series may contain spaces inside label values; the value follows the
                // closing brace (or the name), and a timestamp may follow the value.
                let split_at = match line.rfind('}') {
                    Some(close) => close + 1,
                    None => line.find(char::is_whitespace)?,
                };
                let (series, rest) = line.split_at(split_at);
                let value = rest.split_whitespace().next()?;
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().ok()?,
                };
                Some((series.trim().to_owned(), value))
            })
            .collect();
        Metrics { samples }
    }

    /// The value of one exact series (`herald_registries`, `herald_sessions{dialect="v1"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }

    /// The sum over every series of metric `name`, whatever its labels (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    }

    /// Whether metric `name` has at least one series.
    pub fn has(&self, name: &str) -> bool {
        self.samples
            .iter()
            .any(|(s, _)| s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_series_with_and_without_labels() {
        let m = Metrics::parse(
            "# HELP herald_sessions sessions\n# TYPE herald_sessions gauge\n\
             herald_sessions{dialect=\"v1\"} 3\nherald_sessions{dialect=\"ws\"} 2\n\
             herald_registries 1\nherald_registries_x 9\nlatency_bucket{le=\"+Inf\"} 4 1700000000\n",
        );
        assert_eq!(m.get("herald_sessions{dialect=\"v1\"}"), Some(3.0));
        assert_eq!(m.sum("herald_sessions"), 5.0);
        assert_eq!(m.sum("herald_registries"), 1.0);
        assert_eq!(m.get("latency_bucket{le=\"+Inf\"}"), Some(4.0));
        assert_eq!(m.sum("absent"), 0.0);
        assert!(!m.has("absent"));
    }
}
