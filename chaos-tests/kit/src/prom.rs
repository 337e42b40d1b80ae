//! A strict reader of the Prometheus text exposition format (version 0.0.4), as a scraper
//! reads `/metrics`: `# HELP` and `# TYPE` lines, then samples `name{label="value",...} value`.
//! Anything a scraper would refuse is an error: a bad name, a bad label, an unescaped quote, a
//! value that is not a number, a family typed twice or after its samples, a series twice.

use std::collections::{BTreeMap, HashSet};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// The labels of `{...}` (without the braces).
fn labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in {s:?}"))?;
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// Reads a whole exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut typed: HashSet<String> = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if sampled.contains(name) || !typed.insert(name.to_string()) {
                        return Err(at("TYPE twice or after the samples".into()));
                    }
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(at("bad HELP/TYPE".into())),
                _ => {}
            }
            continue;
        }
        // `name{labels} value [timestamp]`: the labels end at the last `}`.
        let (name, labels, rest) = match line.split_once('{') {
            Some((name, after)) => {
                let close = after
                    .rfind('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                let labels = labels(&after[..close]).map_err(at)?;
                (name, labels, &after[close + 1..])
            }
            None => {
                let (name, rest) = line.split_once(' ').ok_or_else(|| at("no value".into()))?;
                (name, BTreeMap::new(), rest)
            }
        };
        let mut fields = rest.split_whitespace();
        let val = fields.next().ok_or_else(|| at("no value".into()))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("extra fields".into()));
        }
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        sampled.insert(family.to_string());
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("the same series twice".into()));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: value(val).map_err(at)?,
        });
    }
    Ok(out)
}

/// The value of the series `name` whose labels include `want`.
pub fn find(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_scraper_reads_and_refuses_the_rest() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\nb 1e3 1700000000\n";
        let s = parse(text).unwrap();
        assert_eq!(find(&s, "a_total", &[("y", "q\"")]), Some(3.0));
        assert_eq!(find(&s, "h_count", &[]), Some(2.0));
        assert_eq!(find(&s, "b", &[]), Some(1000.0));
        for bad in [
            "a{x=\"1} 1\n",
            "1a 1\n",
            "a one\n",
            "a 1\na 1\n",
            "a 1\n# TYPE a gauge\n",
            "a{x=\"\\q\"} 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was read");
        }
    }
}
