//! The fast JSON scan that classifies every MQTT payload
//! (`protocol::json::is_strict_json`) accepts exactly what the strict parser
//! (`protocol::parse_strict`, edge rule 8.4) accepts: checked over generated
//! JSON, over JSON with random edits, and over token soup rich in the cases
//! that differ between parsers (escapes, surrogates, duplicate names,
//! numbers, nesting).

use hearthlink::protocol::json::is_strict_json;
use hearthlink::protocol::parse_strict;
use proptest::prelude::*;

fn agree(text: &str) -> Result<(), TestCaseError> {
    let want = parse_strict(text).is_ok();
    prop_assert_eq!(is_strict_json(text), want, "text {:?}", text);
    Ok(())
}

/// JSON values, printed compactly or with white space.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z\"\\\\/\u{0}-\u{1f}\u{e9}\u{1F600}]{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec(("[a-e]{1,2}", inner), 0..6)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn printed(v: &serde_json::Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

/// Pieces from which token soup is made.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"",
        "\"a\"",
        "\"b\"",
        "\"\\u0061\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\x\"",
        "\"\\/\"",
        "\\",
        "\\u",
        "0",
        "-0",
        "1",
        "01",
        "-",
        "1.5",
        "1.",
        ".5",
        "1e5",
        "1E+5",
        "1e-400",
        "1e400",
        "-1e309",
        "2e308",
        "1.7976931348623157e308",
        "18446744073709551616",
        "-9223372036854775809",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "\t",
        "\u{1}",
        "\u{e9}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn printed_json_is_accepted(v in json_value(), pretty in any::<bool>()) {
        let text = printed(&v, pretty);
        prop_assert!(is_strict_json(&text), "refused {:?}", text);
        agree(&text)?;
    }

    #[test]
    fn edited_json_agrees(
        v in json_value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, token()), 1..4),
    ) {
        let mut text = printed(&v, false);
        for (at, op, tok) in edits {
            // Cut at a char boundary.
            let cut = text
                .char_indices()
                .map(|(i, _)| i)
                .nth(at.index(text.chars().count().max(1)))
                .unwrap_or(text.len());
            match op {
                0 => text.insert_str(cut, tok),
                1 => {
                    let end = text[cut..].chars().next().map_or(cut, |c| cut + c.len_utf8());
                    text.replace_range(cut..end, "");
                }
                _ => {
                    let end = text[cut..].chars().next().map_or(cut, |c| cut + c.len_utf8());
                    text.replace_range(cut..end, tok);
                }
            }
        }
        agree(&text)?;
    }

    #[test]
    fn token_soup_agrees(tokens in prop::collection::vec(token(), 0..24)) {
        agree(&tokens.concat())?;
    }

    #[test]
    fn objects_with_repeated_names_agree(
        names in prop::collection::vec(prop::sample::select(vec!["a", "b", "\\u0061", "c", "ab"]), 0..40),
        nested in any::<bool>(),
    ) {
        let members: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("\"{n}\":{i}")).collect();
        let obj = format!("{{{}}}", members.join(","));
        let text = if nested { format!("[{obj},{{\"a\":{obj}}}]") } else { obj };
        agree(&text)?;
    }

    /// Member values that are objects reusing the same names: the outer
    /// object's record of its names must come back when an inner one
    /// closes (`{"a":{"b":1},"b":2}` is valid, `{"a":{"b":1},"a":2}` not).
    #[test]
    fn nested_objects_with_shared_names_agree(
        members in prop::collection::vec(
            (prop::sample::select(vec!["a", "b", "c", "abcdefghij", "abcdefghik"]), 0u8..3),
            0..12,
        ),
    ) {
        let body: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, (n, shape))| match shape {
                0 => format!("\"{n}\":{i}"),
                1 => format!("\"{n}\":{{\"a\":{i},\"b\":{i}}}"),
                _ => format!("\"{n}\":{{\"{n}\":{{\"c\":{i}}},\"abcdefghij\":[{{\"a\":1}}]}}"),
            })
            .collect();
        agree(&format!("{{{}}}", body.join(",")))?;
    }

    #[test]
    fn deep_nesting_agrees(depth in 100usize..140, object in any::<bool>()) {
        let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
        let text = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        agree(&text)?;
    }
}
