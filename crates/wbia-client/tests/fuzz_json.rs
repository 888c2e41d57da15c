//! Property tests (fuzzing) of WBIA's lenient JSON reader and the UUID forms it carries
//! (docs/fuzzing.md records what ran).

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use uuid::Uuid;
use wbia_client::{fancy_uuid, parse_lenient, uuid_from_value};

const CASES: u32 = 10_000;

/// `FUZZ_SCALE=N` multiplies the case counts for a longer run (docs/fuzzing.md).
fn scale() -> u32 {
    std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Failures are kept as plain `#[test]`s below, not in proptest's regression files.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES * scale(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text with the characters that matter to the reader: quotes, escapes, brackets, the
/// non-finite tokens' letters, and any other character now and then.
fn jsonish_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "\"", "\\", "\\\"", "{", "}", "[", "]", ":", ",", " ", "-", "0", "1.5e3", "NaN",
            "Infinity", "-Infinity", "Inf", "Na", "null", "true", "\\u00", "\\ud800", "é", "\n",
        ])
        .prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// Finite floats that print and parse back exactly: at most 15 significant digits, where
/// serde_json's default (best-effort, not round-trip) float parser is exact. Arbitrary f64s
/// get their own property below.
fn exact_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (any::<i32>(), 0u32..4).prop_map(|(m, e)| m as f64 / (1u64 << e) as f64),
        (any::<i16>(), 0u32..10).prop_map(|(m, e)| m as f64 / (1u64 << e) as f64),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("__UUID__".to_string()),
        Just("NaN".to_string()),
        Just("-Infinity".to_string()),
        any::<String>(),
        jsonish_text(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        exact_float().prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        any::<String>().prop_map(Value::String),
        jsonish_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A WBIA-dialect document: JSON where a number may be a bare non-finite token.
#[derive(Clone, Debug)]
enum Wbia {
    Plain(Value),
    NonFinite(&'static str),
    Array(Vec<Wbia>),
    Object(Vec<(String, Wbia)>),
}

impl Wbia {
    fn render(&self, pretty: bool) -> String {
        match self {
            Wbia::Plain(v) if pretty => serde_json::to_string_pretty(v).unwrap(),
            Wbia::Plain(v) => v.to_string(),
            Wbia::NonFinite(t) => t.to_string(),
            Wbia::Array(items) => {
                let items: Vec<String> = items.iter().map(|i| i.render(pretty)).collect();
                format!("[{}]", items.join(if pretty { ",\n  " } else { "," }))
            }
            Wbia::Object(kv) => {
                let kv: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v.render(pretty)))
                    .collect();
                format!("{{{}}}", kv.join(if pretty { ", " } else { "," }))
            }
        }
    }

    /// What the lenient reader must give: non-finite tokens read as null.
    fn expected(&self) -> Value {
        match self {
            Wbia::Plain(v) => v.clone(),
            Wbia::NonFinite(_) => Value::Null,
            Wbia::Array(items) => Value::Array(items.iter().map(Wbia::expected).collect()),
            // Later duplicate keys win, as in serde_json.
            Wbia::Object(kv) => Value::Object(
                kv.iter()
                    .map(|(k, v)| (k.clone(), v.expected()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

fn wbia_doc() -> impl Strategy<Value = Wbia> {
    let leaf = prop_oneof![
        json_value().prop_map(Wbia::Plain),
        prop::sample::select(vec!["NaN", "Infinity", "-Infinity"]).prop_map(Wbia::NonFinite),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Wbia::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(Wbia::Object),
        ]
    })
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text never panics, and whatever strict JSON accepts is read identically.
    #[test]
    fn arbitrary_text_never_panics(text in prop_oneof![any::<String>(), jsonish_text()]) {
        let lenient = parse_lenient(&text);
        if let Ok(strict) = serde_json::from_str::<Value>(&text) {
            prop_assert_eq!(lenient.unwrap(), strict);
        }
    }

    /// Bytes off the wire go through a lossy UTF-8 conversion first (as the server does).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_lenient(&String::from_utf8_lossy(&bytes));
    }

    /// serde_json's own output, compact and pretty, round-trips exactly.
    #[test]
    fn serialised_values_round_trip(value in json_value()) {
        prop_assert_eq!(parse_lenient(&value.to_string()).unwrap(), value.clone());
        prop_assert_eq!(
            parse_lenient(&serde_json::to_string_pretty(&value).unwrap()).unwrap(),
            value
        );
    }

    /// Any finite f64 reads the same as serde_json reads it.
    #[test]
    fn floats_read_like_serde_json(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = Value::from(f).to_string();
        prop_assert_eq!(parse_lenient(&text).unwrap(), serde_json::from_str::<Value>(&text).unwrap());
    }

    /// WBIA's bare NaN/Infinity/-Infinity read as null wherever a value may stand; the same
    /// words inside strings and keys are left alone.
    #[test]
    fn non_finite_tokens_read_as_null(doc in wbia_doc(), pretty in any::<bool>()) {
        let text = doc.render(pretty);
        prop_assert_eq!(parse_lenient(&text).unwrap(), doc.expected(), "{}", text);
    }

    /// A document cut short is an error, never a panic (unless the cut leaves valid JSON).
    #[test]
    fn truncated_documents_fail_cleanly(doc in wbia_doc(), cut in any::<prop::sample::Index>()) {
        let text = doc.render(false);
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let _ = parse_lenient(&text[..at]);
    }

    /// Both UUID forms give the UUID back, whatever the case and surrounding blanks.
    #[test]
    fn uuid_forms_round_trip(u in uuid(), upper in any::<bool>(), pad in "[ \t]{0,3}") {
        let mut s = u.to_string();
        if upper {
            s = s.to_uppercase();
        }
        let padded = Value::String(format!("{pad}{s}{pad}"));
        prop_assert_eq!(uuid_from_value(&padded), Some(u));
        prop_assert_eq!(uuid_from_value(&fancy_uuid(&u)), Some(u));
        let fancy_text = serde_json::json!([{"__UUID__": s}]).to_string();
        prop_assert_eq!(uuid_from_value(&parse_lenient(&fancy_text).unwrap()[0]), Some(u));
        // A fancy object with anything else in it is not a UUID.
        let extra = serde_json::json!({"__UUID__": u.to_string(), "x": 1});
        prop_assert_eq!(uuid_from_value(&extra), None);
    }

    /// Arbitrary values never panic and give a UUID only from a string or a one-key
    /// `__UUID__` object.
    #[test]
    fn uuid_from_arbitrary_values(value in json_value()) {
        let got = uuid_from_value(&value);
        let expect = match &value {
            Value::String(s) => Uuid::parse_str(s.trim()).ok(),
            Value::Object(m) if m.len() == 1 => m.get("__UUID__").and_then(uuid_from_value),
            _ => None,
        };
        prop_assert_eq!(got, expect);
    }
}

/// Deep nesting is refused by serde_json's recursion limit, not by a stack overflow, in both
/// passes of the reader.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for open in ["[", "{\"a\":"] {
        let text = format!("{}NaN", open.repeat(100_000));
        assert!(parse_lenient(&text).is_err());
    }
    let fancy = format!("{}\"x\"{}", "{\"__UUID__\":".repeat(100), "}".repeat(100));
    let value = parse_lenient(&fancy).unwrap();
    assert_eq!(uuid_from_value(&value), None);
}
