//! Prefix templates: `{stream}/{timestamp:%Y/%m/%d/%H}/{field:customer_id}/` and the like.
//! A prefix is rendered per record, from the record's own arrival time and fields, so that
//! delivering the same records again yields the same object names.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Stream,
    Shard,
    /// A strftime pattern applied to the record's arrival time (UTC).
    Timestamp(String),
    /// A top-level field of the record parsed as JSON (dynamic partitioning).
    Field(String),
}

/// A parsed prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is rendered from.
#[derive(Debug)]
pub struct RenderInput<'a> {
    pub stream: &'a str,
    pub shard: &'a str,
    pub arrival_ms: u64,
    /// The record parsed as JSON, when the template uses fields and the record parses.
    pub json: Option<&'a serde_json::Value>,
}

impl Template {
    /// Parses a template; the error says which placeholder is wrong.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
            let inner = &after[..close];
            let part = match inner.split_once(':') {
                None if inner == "stream" => Part::Stream,
                None if inner == "shard" => Part::Shard,
                Some(("timestamp", fmt)) if !fmt.is_empty() => {
                    check_strftime(fmt)?;
                    Part::Timestamp(fmt.to_string())
                }
                Some(("field", name)) if !name.is_empty() => Part::Field(name.to_string()),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{inner}}}: use {{stream}}, {{shard}}, \
                         {{timestamp:%Y/%m/%d}} or {{field:NAME}}"
                    ));
                }
            };
            parts.push(part);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("'}}' without '{{' in {s:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no placeholder.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Whether rendering needs the record parsed as JSON.
    pub fn uses_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The text before the first placeholder: every rendered prefix starts with it.
    pub fn static_head(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// The prefix for one record, or why the record cannot be placed.
    pub fn render(&self, input: &RenderInput<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Stream => out.push_str(input.stream),
                Part::Shard => out.push_str(input.shard),
                Part::Timestamp(fmt) => {
                    let ms = i64::try_from(input.arrival_ms).unwrap_or(i64::MAX);
                    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
                    out.push_str(&at.format(fmt).to_string());
                }
                Part::Field(name) => {
                    let value = input
                        .json
                        .ok_or_else(|| {
                            format!("record is not a JSON object; prefix needs field {name:?}")
                        })?
                        .get(name)
                        .ok_or_else(|| format!("record has no field {name:?} for the prefix"))?;
                    let text = match value {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(format!(
                                "field {name:?} must be a string, number or boolean for the prefix"
                            ));
                        }
                    };
                    out.push_str(&sanitize(&text));
                }
            }
        }
        Ok(out)
    }
}

/// Keeps a field's value to one path segment of safe characters.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.as_str() {
        "" => "_".to_string(),
        "." | ".." => cleaned.replace('.', "_"),
        _ => cleaned,
    }
}

fn check_strftime(fmt: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(fmt).any(|item| matches!(item, Item::Error)) {
        return Err(format!("bad timestamp pattern {fmt:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(json: Option<&'a serde_json::Value>) -> RenderInput<'a> {
        RenderInput {
            stream: "orders",
            shard: "shardId-000000000001",
            // 2024-03-05T07:08:09Z
            arrival_ms: 1_709_622_489_000,
            json,
        }
    }

    #[test]
    fn renders_stream_shard_time_and_fields() {
        let t = Template::parse("{stream}/{timestamp:%Y/%m/%d/%H}/{field:customer_id}/{shard}/")
            .expect("valid");
        let json = serde_json::json!({"customer_id": "c/17", "n": 1});
        assert_eq!(
            t.render(&input(Some(&json))).expect("renders"),
            "orders/2024/03/05/07/c_17/shardId-000000000001/"
        );
        assert!(t.uses_fields());
        assert_eq!(t.static_head(), "");
    }

    #[test]
    fn a_missing_field_is_a_reason_not_a_prefix() {
        let t = Template::parse("by-customer/{field:customer_id}/").expect("valid");
        let json = serde_json::json!({"n": 1});
        let e = t.render(&input(Some(&json))).expect_err("no field");
        assert!(e.contains("customer_id"), "{e}");
        assert!(t.render(&input(None)).is_err());
        assert_eq!(t.static_head(), "by-customer/");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Template::parse("{streams}/").is_err());
        assert!(Template::parse("{stream/").is_err());
        assert!(Template::parse("x}/").is_err());
        assert!(Template::parse("{field:}/").is_err());
        assert!(Template::parse("errors/").expect("valid").is_static());
    }
}
