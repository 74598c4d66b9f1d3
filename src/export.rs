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

/// Renders `json` (a JSON text, such as [`SessionController::to_json`]) as Django's
/// `json_script` does: a `<script type="application/json">` element that a page's script reads
/// with `JSON.parse(document.getElementById(id).textContent)`.
///
/// `<`, `>` and `&` in the JSON become `\u003C`, `\u003E` and `\u0026`, so no value can close
/// the element or open a comment; U+2028 and U+2029 become `\u2028` and `\u2029` as well. The
/// escapes are JSON escapes, so the element's text parses back to exactly the same data. The `id`
/// is HTML-escaped (`&`, `<`, `>`, `"`, `'`), so it cannot leave its attribute.
///
/// Unlike [`escape_js`], the result is a whole element: put it in the page's HTML as is, not
/// inside a script or an attribute.
///
/// [`SessionController::to_json`]: crate::SessionController::to_json
///
/// # Example
///
/// ```
/// use tower_sessions_controller::json_script;
///
/// assert_eq!(
///     json_script(r#"{"note":"</script>"}"#, "cart-data"),
///     r#"<script id="cart-data" type="application/json">{"note":"\u003C/script\u003E"}</script>"#
/// );
/// ```
pub fn json_script(json: &str, id: &str) -> String {
    let mut out = String::with_capacity(json.len() + id.len() + 64);
    out.push_str("<script id=\"");
    for c in id.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out.push_str("\" type=\"application/json\">");
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push_str("</script>");
    out
}
