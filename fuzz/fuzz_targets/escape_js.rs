//! `escape_js` on arbitrary text: the output, read as a JSON string literal, decodes back to the
//! input, and holds none of the characters that could end a script string or an HTML context.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_sessions_controller::escape_js;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let escaped = escape_js(&input);
    for bad in ['<', '>', '&', '"', '\'', '\u{2028}', '\u{2029}'] {
        assert!(!escaped.contains(bad), "{bad:?} in {escaped:?}");
    }
    assert!(
        !escaped.chars().any(|c| c < ' '),
        "an ASCII control character in {escaped:?}"
    );
    let decoded: String = serde_json::from_str(&format!("\"{escaped}\""))
        .unwrap_or_else(|err| panic!("{escaped:?} is not a JSON string body: {err}"));
    assert_eq!(decoded, input);
});
