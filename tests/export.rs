//! `escape_js` against Django's own `escapejs`, on vectors Django produced
//! (`tests/data/escapejs_vectors.py` writes them).

use serde_json::Value;
use tower_sessions_controller::escape_js;

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
