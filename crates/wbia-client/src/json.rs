//! WBIA's JSON dialect (wbia-utool `to_json`/`from_json`): UUIDs travel as
//! `{"__UUID__": "<uuid>"}` and non-finite floats as bare `NaN`, `Infinity`, `-Infinity`
//! (docs/wbia-api.md §1.2), which strict JSON parsers reject.

use serde_json::Value;
use uuid::Uuid;

/// Parses WBIA JSON, accepting bare `NaN`/`Infinity`/`-Infinity` (read as `null`, since JSON
/// values cannot hold them; WBIA only emits them for scores that mean "no score").
pub fn parse_lenient(text: &str) -> Result<Value, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => {
            let cleaned = replace_non_finite(text);
            if cleaned == text {
                return Err(first);
            }
            serde_json::from_str(&cleaned)
        }
    }
}

/// Replaces the bare tokens `NaN`, `Infinity` and `-Infinity` outside strings by `null`.
fn replace_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.push_str("null");
                rest = &rest[t.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// `{"__UUID__": "<uuid>"}`.
pub fn fancy_uuid(uuid: &Uuid) -> Value {
    serde_json::json!({ "__UUID__": uuid.to_string() })
}

/// A UUID from either WBIA's `{"__UUID__": ...}` form or a plain string.
pub fn uuid_from_value(value: &Value) -> Option<Uuid> {
    match value {
        Value::String(s) => Uuid::parse_str(s.trim()).ok(),
        Value::Object(map) if map.len() == 1 => map.get("__UUID__").and_then(uuid_from_value),
        _ => None,
    }
}

/// The `annot_uuid_list` query value WBIA's `/json/` getters expect.
pub fn uuid_list_param(uuids: &[Uuid]) -> String {
    Value::Array(uuids.iter().map(fancy_uuid).collect()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tokens_become_null_outside_strings() {
        let v = parse_lenient(r#"{"a": [1.5, NaN, -Infinity, Infinity], "s": "NaN Infinity"}"#)
            .unwrap();
        assert_eq!(v["a"], serde_json::json!([1.5, null, null, null]));
        assert_eq!(v["s"], "NaN Infinity");
    }

    #[test]
    fn strict_json_is_untouched_and_garbage_still_fails() {
        assert_eq!(parse_lenient("[1, 2]").unwrap(), serde_json::json!([1, 2]));
        assert!(parse_lenient("{nope").is_err());
    }

    #[test]
    fn uuids_in_both_forms() {
        let u = Uuid::parse_str("3f2504e0-4f89-41d3-9a0c-0305e82c3301").unwrap();
        assert_eq!(uuid_from_value(&fancy_uuid(&u)), Some(u));
        assert_eq!(uuid_from_value(&Value::String(u.to_string())), Some(u));
        assert_eq!(uuid_from_value(&serde_json::json!({"x": 1})), None);
        assert_eq!(
            uuid_list_param(&[u]),
            r#"[{"__UUID__":"3f2504e0-4f89-41d3-9a0c-0305e82c3301"}]"#
        );
    }
}
