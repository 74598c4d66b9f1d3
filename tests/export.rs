//! `escape_js` against Django's own `escapejs`, on vectors Django produced
//! (`tests/data/escapejs_vectors.py` writes them).

use serde_json::Value;
use tower_sessions_controller::{escape_js, json_script};

fn vectors() -> Vec<(String, String)> {
    let text = include_str!("data/escapejs_vectors.json");
    let doc: Value = serde_json::from_str(text).expect("vectors file is JSON");
    doc["vectors"]
        .as_array()
        .expect("a list of vectors")
        .iter()
        .map(|v| {
            (
                v["input"].as_str().expect("input").to_owned(),
                v["escaped"].as_str().expect("escaped").to_owned(),
            )
        })
        .collect()
}

#[test]
fn escape_js_matches_djangos_escapejs_byte_for_byte() {
    let vectors = vectors();
    assert!(vectors.len() >= 10);
    for (input, expected) in vectors {
        assert_eq!(escape_js(&input), expected, "input {input:?}");
    }
}

#[test]
fn escaped_json_cannot_close_a_script_element_or_string() {
    let escaped = escape_js(r#"{"note":"</script><script>window.pwned=1</script>'"}"#);
    for forbidden in ["<", ">", "\"", "'", "&"] {
        assert!(!escaped.contains(forbidden), "{forbidden} in {escaped}");
    }
}

#[test]
fn escaped_json_reads_back_as_the_original_through_a_js_string() {
    // Decoding \uXXXX escapes is what a JavaScript string literal does with the output.
    let original = "{\"a\":\"x\\u2028y\u{2028}</script>\n\"}";
    let escaped = escape_js(original);
    let as_js_literal = format!("\"{escaped}\"");
    let decoded: String = serde_json::from_str(&as_js_literal).expect("valid string literal");
    assert_eq!(decoded, original);
}

/// The text content of the one `<script>` element `json_script` made, as a browser's HTML parser
/// sees it: everything up to the first `</script` (any case) ends the element.
fn script_text(element: &str) -> &str {
    let start = element.find('>').expect("an opening tag") + 1;
    let end = element.to_ascii_lowercase()[start..]
        .find("</script")
        .expect("a closing tag")
        + start;
    assert_eq!(
        &element[end..],
        "</script>",
        "the element closes only at its end"
    );
    &element[start..end]
}

#[test]
fn json_script_content_cannot_close_the_element_and_parses_back() {
    let hostile = serde_json::json!({
        "note": "</script><script>window.pwned=1</script>",
        "comment": "<!-- <script>",
        "upper": "</SCRIPT >",
        "amp": "&lt; &amp;",
        "separators": "a\u{2028}b\u{2029}c",
        "quote": "\"'`",
    });
    let json = serde_json::to_string(&hostile).unwrap();
    let element = json_script(&json, "cart-data");
    assert!(element.starts_with(r#"<script id="cart-data" type="application/json">"#));
    let text = script_text(&element);
    for forbidden in ["<", ">", "&", "\u{2028}", "\u{2029}"] {
        assert!(!text.contains(forbidden), "{forbidden:?} in {text}");
    }
    let parsed: Value = serde_json::from_str(text).expect("the content is JSON");
    assert_eq!(parsed, hostile);
}

#[test]
fn json_script_escapes_the_id_so_it_cannot_leave_its_attribute() {
    let element = json_script("{}", r#"x" onload="alert(1)'><b>&"#);
    let tag_end = element.find('>').unwrap();
    let tag = &element[..tag_end];
    assert_eq!(
        tag,
        r#"<script id="x&quot; onload=&quot;alert(1)&#x27;&gt;&lt;b&gt;&amp;" type="application/json""#
    );
    assert_eq!(script_text(&element), "{}");
}
