//! The page frame every page shares, the favicon, and the escape for text put into HTML.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

use crate::namespaces::{Cart, Checkout};

/// `text` safe as HTML text or as a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the header with the cart's item count, the note of an expired checkout if
/// there is one, then `body` (HTML, already escaped) under the heading `title`.
///
/// The count is rendered here, so it is right without JavaScript. The cart's data also goes
/// into the page through the crate's `json_script` export, and a small script counts the items
/// from it again, as a page's own script would read session data: whatever a note holds, it
/// cannot leave that element.
pub fn page(title: &str, cart: &Cart, checkout: &Checkout, body: &str) -> String {
    let expired = if checkout.has_expired() {
        r#"<p class="notice" id="checkout-expired">Your checkout expired, please
        <a href="/shop/checkout">start again</a>.</p>"#
    } else {
        ""
    };
    let cart_data = cart.to_json_script("cart-data");
    let script = format!(
        r#"{cart_data}
<script>
  const cart = JSON.parse(document.getElementById("cart-data").textContent);
  const count = Object.values(cart.items ?? {{}}).reduce((sum, quantity) => sum + quantity, 0);
  document.getElementById("cart-count").textContent = count;
</script>"#
    );
    let cart_link = format!(
        r#"<a href="/shop/cart">Cart (<span id="cart-count">{}</span>)</a>"#,
        cart.count()
    );
    frame(title, &cart_link, expired, body, &script)
}

/// A page without the session: for an error that left no session to read.
pub fn bare_page(title: &str, body: &str) -> String {
    frame(title, r#"<a href="/shop/cart">Cart</a>"#, "", body, "")
}

fn frame(title: &str, cart_link: &str, notice: &str, body: &str, script: &str) -> String {
    let title = escape(title);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Shopping cart</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<style>
  *, *::before, *::after {{ box-sizing: border-box; }}
  /* `anywhere`: a word longer than the screen (a note, a name) wraps instead of widening it. */
  body {{ font-family: system-ui, sans-serif; line-height: 1.4; max-width: 44rem; margin: 0 auto;
    padding: 0 1rem; overflow-wrap: anywhere; }}
  header {{ display: flex; justify-content: space-between; gap: 1rem; padding: 1rem 0;
    border-bottom: 1px solid #ccc; }}
  .notice {{ background: #fff3cd; border: 1px solid #e0c46c; padding: .75rem; }}
  .confirmation {{ background: #e6f4ea; border: 1px solid #7cb68e; padding: .75rem; }}
  .error {{ background: #fde8e8; border: 1px solid #d88; color: #900; padding: .75rem; }}
  table {{ border-collapse: collapse; width: 100%; }}
  td, th {{ padding: .4rem .25rem; border-bottom: 1px solid #eee; text-align: left;
    vertical-align: top; }}
  .money {{ text-align: right; white-space: nowrap; }}
  form.line {{ display: flex; flex-wrap: wrap; gap: .25rem; }}
  form.inline {{ display: inline; }}
  input[type=number] {{ width: 4.5rem; }}
  input, textarea {{ max-width: 100%; font: inherit; }}
  textarea {{ width: 100%; }}
  label {{ display: block; margin: .5rem 0; }}
  .products {{ list-style: none; padding: 0; }}
  .products li {{ padding: .75rem 0; border-bottom: 1px solid #eee; }}
  .muted {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<header>
  <a href="/shop">Shop</a>
  {cart_link}
</header>
{notice}
<main>
<h1>{title}</h1>
{body}
</main>
{script}
</body>
</html>
"#
    )
}

/// `<p class="error">` with `message` as a sentence, for the top of a form's page.
pub fn error_box(message: &str) -> String {
    format!(
        r#"<p class="error" role="alert" id="error">{}.</p>"#,
        escape(&capitalized(message))
    )
}

/// "The quantity…" from "the quantity…".
fn capitalized(message: &str) -> String {
    let mut chars = message.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// "12 minutes" or "5 seconds": how long a namespace is kept, for the page.
pub fn duration(expiry: time::Duration) -> String {
    let seconds = expiry.whole_seconds();
    if seconds >= 120 && seconds % 60 == 0 {
        format!("{} minutes", seconds / 60)
    } else if seconds == 1 {
        String::from("1 second")
    } else {
        format!("{seconds} seconds")
    }
}

/// The shop's icon, a basket, drawn in SVG so that it needs no binary file.
const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><path d="M4 12h24l-3 15H7z" fill="#2e7d32"/><path d="M10 12l6-8 6 8" fill="none" stroke="#2e7d32" stroke-width="2.5" stroke-linejoin="round"/><circle cx="16" cy="19" r="3" fill="#c62828"/></svg>"##;

/// GET /favicon.svg, and GET /favicon.ico for the clients that ask for it without reading the
/// page's `<link rel="icon">`: the same SVG, which browsers take whatever the name.
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}
