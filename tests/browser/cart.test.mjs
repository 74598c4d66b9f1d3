// The shopping-cart example used as a visitor would, in headless Chromium. run.sh starts the
// example twice and sets BASE_URL (http://127.0.0.1:PORT, default settings), SHORT_EXPIRY_URL
// (the one started with a checkout expiry of CHECKOUT_EXPIRY_SECS, a few seconds) and
// OUTPUT_DIR (where the screenshots go).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const SHORT_EXPIRY_URL = process.env.SHORT_EXPIRY_URL;
const CHECKOUT_EXPIRY_SECS = Number(process.env.CHECKOUT_EXPIRY_SECS);
const OUTPUT_DIR = process.env.OUTPUT_DIR;
for (const url of [BASE_URL, SHORT_EXPIRY_URL]) {
  assert.match(url ?? '', /^http:\/\/127\.0\.0\.1:\d+$/, 'the example must be at http://127.0.0.1:PORT');
}
assert.ok(CHECKOUT_EXPIRY_SECS > 0, 'CHECKOUT_EXPIRY_SECS must be set');
assert.ok(OUTPUT_DIR, 'OUTPUT_DIR must be set');

const PAYLOAD = '</script><script>window.pwned=1</script>';

let browser;
// The first visitor; each test that needs someone else opens a context of its own.
let visitor;
// Every request a page tried that was not to the example, and every script error.
const strayRequests = [];
const pageErrors = [];

before(async () => {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Nothing but 127.0.0.1 resolves.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
  });
  visitor = await newVisitor();
});

after(async () => {
  await browser?.close();
});

/**
 * A fresh browser context (cookies of its own: another visitor) and a page in it. Cookies do not
 * tell ports apart, so a visitor stays on one instance of the example.
 */
async function newVisitor() {
  const context = await browser.newContext();
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(`${BASE_URL}/`) || url.startsWith(`${SHORT_EXPIRY_URL}/`)) {
      return route.continue();
    }
    strayRequests.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error.message));
  return page;
}

/** Clicks a form's button and waits for the page the redirect leads to. */
async function submit(page, button) {
  await Promise.all([page.waitForNavigation(), button.click()]);
}

/** The item count the page's script put in the header. */
async function headerCount(page) {
  return page.locator('#cart-count').textContent();
}

/** The cart's rows as "item × quantity". */
async function cartRows(page) {
  return page.locator('#cart-items tr[data-item]').evaluateAll((rows) =>
    rows.map((row) => `${row.dataset.item} × ${row.querySelector('input[name=quantity]').value}`),
  );
}

async function addToCart(page, item, quantity, base = BASE_URL) {
  await page.goto(`${base}/shop`);
  const product = page.locator(`#product-${item}`);
  await product.locator('input[name=quantity]').fill(String(quantity));
  await submit(page, product.getByRole('button', { name: 'Add to cart' }));
}

test('two products added stay in the cart after a reload', async () => {
  await addToCart(visitor, 'apple', 2);
  await addToCart(visitor, 'pear', 1);
  assert.equal(await headerCount(visitor), '3');

  await visitor.goto(`${BASE_URL}/shop/cart`);
  await visitor.reload();
  assert.deepEqual(await cartRows(visitor), ['apple × 2', 'pear × 1']);
  assert.equal(await headerCount(visitor), '3');
});

test('the cart page changes a quantity and removes an item', async () => {
  await addToCart(visitor, 'cherry', 1);
  await visitor.goto(`${BASE_URL}/shop/cart`);
  const cherry = visitor.locator('tr[data-item="cherry"]');
  await cherry.locator('input[name=quantity]').fill('4');
  await submit(visitor, cherry.getByRole('button', { name: 'Update' }));
  assert.deepEqual(await cartRows(visitor), ['apple × 2', 'cherry × 4', 'pear × 1']);

  await submit(visitor, visitor.locator('tr[data-item="cherry"]').getByRole('button', { name: 'Remove' }));
  assert.deepEqual(await cartRows(visitor), ['apple × 2', 'pear × 1']);
  assert.equal(await headerCount(visitor), '3');
});

test('a note that tries to close the script is shown as text and never runs', async () => {
  await visitor.goto(`${BASE_URL}/shop/cart`);
  await visitor.locator('textarea[name=note]').fill(PAYLOAD);
  await submit(visitor, visitor.getByRole('button', { name: 'Save the note' }));
  await visitor.reload();

  assert.equal(await visitor.locator('#cart-note').textContent(), PAYLOAD);
  assert.equal(await visitor.locator('textarea[name=note]').inputValue(), PAYLOAD);
  assert.equal(await visitor.evaluate(() => typeof window.pwned), 'undefined');
  // The embedded data still parses: the script counted the items.
  assert.equal(await headerCount(visitor), '3');
  const embedded = await visitor.evaluate(() =>
    JSON.parse(document.getElementById('cart-data').textContent),
  );
  assert.equal(embedded.note, PAYLOAD);

  await visitor.screenshot({ path: join(OUTPUT_DIR, 'cart.png'), fullPage: true });
});

test('another visitor sees an empty cart', async () => {
  const other = await newVisitor();
  await other.goto(`${BASE_URL}/shop/cart`);
  assert.ok(await other.locator('#cart-empty').isVisible());
  assert.equal(await headerCount(other), '0');
  await other.context().close();
});

test('the checkout goes address, delivery, confirm, and placing the order purges it', async () => {
  const shopper = await newVisitor();
  await addToCart(shopper, 'banana', 3);
  await shopper.goto(`${BASE_URL}/shop/checkout`);
  assert.equal(shopper.url(), `${BASE_URL}/shop/checkout/address`);

  await fillAddress(shopper);
  assert.equal(shopper.url(), `${BASE_URL}/shop/checkout/delivery`);
  await shopper.getByLabel('Express').check();
  await submit(shopper, shopper.getByRole('button', { name: 'Continue' }));
  assert.equal(shopper.url(), `${BASE_URL}/shop/checkout/confirm`);
  const summary = await shopper.locator('main').textContent();
  assert.match(summary, /3 × banana/);
  assert.match(summary, /To Ada Lovelace, 12 St James's Square, London; delivery express/);

  await submit(shopper, shopper.getByRole('button', { name: 'Place the order' }));
  assert.ok(await shopper.locator('#order-placed').isVisible());
  assert.equal(await headerCount(shopper), '0');
  // Nothing left to check out: the checkout sends the visitor to the (empty) cart.
  await shopper.goto(`${BASE_URL}/shop/checkout`);
  assert.equal(shopper.url(), `${BASE_URL}/shop/cart`);
  assert.ok(await shopper.locator('#cart-empty').isVisible());
  assert.equal(await shopper.locator('#checkout-expired').count(), 0);
  await shopper.context().close();
});

test('an expired checkout says so, and the cart survives', async () => {
  // On the instance whose checkout expires after CHECKOUT_EXPIRY_SECS.
  const base = SHORT_EXPIRY_URL;
  const shopper = await newVisitor();
  await addToCart(shopper, 'apple', 2, base);
  await addToCart(shopper, 'pear', 1, base);
  await shopper.goto(`${base}/shop/checkout`);
  await fillAddress(shopper);
  assert.equal(shopper.url(), `${base}/shop/checkout/delivery`);
  assert.equal(await shopper.locator('#checkout-expired').count(), 0);

  // The one wait the test cannot avoid: the example's checkout expiry, in real time.
  await sleep(CHECKOUT_EXPIRY_SECS * 1000 + 300);
  await shopper.reload();
  assert.equal(shopper.url(), `${base}/shop/checkout/address`);
  assert.match(
    await shopper.locator('#checkout-expired').textContent(),
    /Your checkout expired, please\s+start again/,
  );
  assert.equal(await shopper.locator('input[name=name]').inputValue(), '');
  assert.equal(await headerCount(shopper), '3');
  await shopper.screenshot({ path: join(OUTPUT_DIR, 'checkout-expired.png'), fullPage: true });
  await shopper.goto(`${base}/shop/cart`);
  assert.deepEqual(await cartRows(shopper), ['apple × 2', 'pear × 1']);

  // Starting again clears the note.
  await shopper.goto(`${base}/shop/checkout`);
  await fillAddress(shopper);
  assert.equal(await shopper.locator('#checkout-expired').count(), 0);
  await shopper.context().close();
});

test('the cart empties', async () => {
  await visitor.goto(`${BASE_URL}/shop/cart`);
  await submit(visitor, visitor.getByRole('button', { name: 'Empty the cart' }));
  assert.ok(await visitor.locator('#cart-empty').isVisible());
  assert.equal(await headerCount(visitor), '0');
});

test('no page tried to reach anything but the example, and no script failed', () => {
  assert.deepEqual(strayRequests, []);
  assert.deepEqual(pageErrors, []);
});

/** Answers the address step. */
async function fillAddress(page) {
  await page.getByLabel('Name').fill('Ada Lovelace');
  await page.getByLabel('Street').fill("12 St James's Square");
  await page.getByLabel('City').fill('London');
  await submit(page, page.getByRole('button', { name: 'Continue' }));
}
