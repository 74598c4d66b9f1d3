//! The page frame every page shares, and the escape for text put into HTML.

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
/// The cart's data goes into the page through the crate's `json_script` export, and a small
/// script counts the items from it: whatever a note holds, it cannot leave that element.
pub fn page(title: &str, cart: &Cart, checkout: &Checkout, body: &str) -> String {
    let title = escape(title);
    let expired = if checkout.has_expired() {
        r#"<p class="notice" id="checkout-expired">Your checkout expired, please
        <a href="/shop/checkout">start again</a>.</p>"#
    } else {
        ""
    };
    let cart_data = cart.to_json_script("cart-data");
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Shopping cart</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 0 auto; padding: 0 1rem; }}
  header {{ display: flex; justify-content: space-between; padding: 1rem 0; border-bottom: 1px solid #ccc; }}
  .notice {{ background: #fff3cd; border: 1px solid #e0c46c; padding: .75rem; }}
  .error {{ color: #a00; }}
  table {{ border-collapse: collapse; width: 100%; }}
  td, th {{ padding: .4rem; border-bottom: 1px solid #eee; text-align: left; }}
  form.inline {{ display: inline; }}
  input[type=number] {{ width: 4rem; }}
  label {{ display: block; margin: .5rem 0; }}
  .muted {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<header>
  <a href="/shop">Shop</a>
  <a href="/shop/cart">Cart (<span id="cart-count">?</span>)</a>
</header>
{expired}
<main>
<h1>{title}</h1>
{body}
</main>
{cart_data}
<script>
  const cart = JSON.parse(document.getElementById("cart-data").textContent);
  const count = Object.values(cart.items ?? {{}}).reduce((sum, quantity) => sum + quantity, 0);
  document.getElementById("cart-count").textContent = count;
</script>
</body>
</html>
"#
    )
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
