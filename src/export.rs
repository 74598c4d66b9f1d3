//! Getting namespace data into a page.

use std::fmt::Write;

/// Escapes `s` for use inside a quoted JavaScript string: byte for byte Django's `escapejs`.
///
/// Backslash, both quotes, `<`, `>`, `&`, `=`, `-`, `;`, the backtick, U+2028, U+2029 and every
/// ASCII control character become `\uXXXX` escapes (upper-case hex); everything else is copied.
/// The result is safe only *inside a string literal* of a script: `JSON.parse("…")`. It is not
/// an HTML escape.
///
/// # Example
///
/// ```
/// use tower_sessions_controller::escape_js;
///
/// assert_eq!(escape_js(r#"{"a":"</script>"}"#), r#"{\u0022a\u0022:\u0022\u003C/script\u003E\u0022}"#);
/// assert_eq!(escape_js("line\nbreak"), r"line\u000Abreak");
/// ```
pub fn escape_js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 4);
    for c in s.chars() {
        match c {
            '\\'
            | '\''
            | '"'
            | '>'
            | '<'
            | '&'
            | '='
            | '-'
            | ';'
            | '`'
            | '\u{2028}'
            | '\u{2029}'
            | '\0'..='\u{1f}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}
