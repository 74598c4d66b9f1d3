// The shopping-cart example used as a visitor would, in headless Chromium. run.sh starts the
// example twice and sets BASE_URL (http://127.0.0.1:PORT, default settings), SHORT_EXPIRY_URL
// (the one started with a checkout expiry of CHECKOUT_EXPIRY_SECS, a few seconds) and
// OUTPUT_DIR (where the screenshots go).
//
// The prices below are the example's catalogue (examples/shopping_cart/catalogue.rs), in pence.
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
const PRICES = { apple: 45, pear: 60, banana: 25, cherry: 350, 'pippin-crate': 980 };
const EXPRESS_DELIVERY = 495;
// A phone's width, and a word too long for it.
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true };
const LONG_WORD = 'x'.repeat(300);

/** "£1.05" for 105. */
function pounds(pence) {
  return `£${Math.floor(pence / 100)}.${String(pence % 100).padStart(2, '0')}`;
}

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
async function newVisitor(options = {}) {
  const context = await browser.newContext(options);
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

/**
 * Posts `fields` to `action` from a form built in the page without the browser's own checks
 * (`novalidate`), as a script or an older browser would, and returns the response of the page
 * the browser then shows.
 */
async function postForm(page, action, fields) {
  const [response] = await Promise.all([
    page.waitForNavigation(),
    page.evaluate(
      ({ action, fields }) => {
        const form = document.createElement('form');
        form.method = 'post';
        form.action = action;
        form.noValidate = true;
        for (const [name, value] of Object.entries(fields)) {
          const input = document.createElement('input');
          input.type = 'hidden';
          input.name = name;
          input.value = value;
          form.append(input);
        }
        document.body.append(form);
        form.submit();
      },
      { action, fields },
    ),
  ]);
  return response;
}

/** Whether the page is wider than the window (it would scroll sideways). */
async function overflowsSideways(page) {
  return page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
}

/** The message of the page's error box. */
async function errorMessage(page) {
  return page.locator('#error').textContent();
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

test('adding a product confirms it once, with the cart\'s count and total', async () => {
  // The visitor's cart holds apple × 2 and pear × 1 from the test before.
  await visitor.goto(`${BASE_URL}/shop`);
  assert.equal(await visitor.locator('#added').count(), 0);
  assert.equal(await visitor.locator('#product-apple .price').textContent(), pounds(PRICES.apple));

  await addToCart(visitor, 'banana', 2);
  assert.equal(visitor.url(), `${BASE_URL}/shop`);
  const total = 2 * PRICES.apple + PRICES.pear + 2 * PRICES.banana;
  assert.equal(
    (await visitor.locator('#added').textContent()).replace(/\s+/g, ' '),
    `Added 2 × Banana to your cart. Your cart: 5 items, ${pounds(total)}.`,
  );
  assert.equal(await headerCount(visitor), '5');
  // Shown once: the next page has no confirmation.
  await visitor.reload();
  assert.equal(await visitor.locator('#added').count(), 0);
});

test('the cart shows each line\'s price and the total', async () => {
  await visitor.goto(`${BASE_URL}/shop/cart`);
  assert.deepEqual(await cartRows(visitor), ['apple × 2', 'banana × 2', 'pear × 1']);
  const prices = await visitor.locator('#cart-items tr[data-item] td.money').allTextContents();
  assert.deepEqual(prices, [2 * PRICES.apple, 2 * PRICES.banana, PRICES.pear].map(pounds));
  assert.equal(
    await visitor.locator('#cart-total').textContent(),
    pounds(2 * PRICES.apple + 2 * PRICES.banana + PRICES.pear),
  );

  const banana = visitor.locator('tr[data-item="banana"]');
  await banana.locator('input[name=quantity]').fill('0');
  await submit(visitor, banana.getByRole('button', { name: 'Update' }));
  assert.deepEqual(await cartRows(visitor), ['apple × 2', 'pear × 1']);
  assert.equal(await visitor.locator('#cart-total').textContent(), pounds(2 * PRICES.apple + PRICES.pear));
});

test('without JavaScript the header still counts the items', async () => {
  // The same visitor (the same cookie) in a browser that runs no script.
  const page = await newVisitor({ javaScriptEnabled: false });
  await page.context().addCookies(await visitor.context().cookies());
  await page.goto(`${BASE_URL}/shop/cart`);
  assert.equal(await headerCount(page), '3');
  await page.context().close();
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
  assert.match(summary, /3 × Banana/);
  assert.match(summary, /Delivery: Express, tomorrow/);
  assert.match(summary, /To Ada Lovelace, 12 St James's Square, London\./);
  assert.equal(
    await shopper.locator('#order-total').textContent(),
    pounds(3 * PRICES.banana + EXPRESS_DELIVERY),
  );

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

test('a form the shop cannot take answers its own page with the reason', async () => {
  const shopper = await newVisitor();
  await addToCart(shopper, 'apple', 1);

  // [form's address, fields, status, message, heading of the page answered]
  const refusals = [
    ['/shop/cart', { item: 'apple', quantity: 'abc' }, 422,
      'The quantity must be a whole number from 1 to 99, not "abc".', 'Products'],
    ['/shop/cart', { item: 'apple', quantity: '0' }, 422,
      'The quantity must be a whole number from 1 to 99, not "0".', 'Products'],
    ['/shop/cart', { item: 'apple', quantity: '' }, 422,
      'The quantity is empty: give a whole number from 1 to 99.', 'Products'],
    ['/shop/cart', { item: 'kiwi', quantity: '1' }, 422, 'There is no product "kiwi".', 'Products'],
    ['/shop/cart', { item: 'apple', quantity: '99' }, 409,
      'The cart holds 1 × Apple; 99 more would pass the limit of 99 per product.', 'Products'],
    ['/shop/cart/items/apple', { quantity: '-1' }, 422,
      'The quantity must be a whole number from 0 to 99, not "-1".', 'Your cart'],
    ['/shop/cart/items/kiwi', { quantity: '1' }, 404, 'There is no product "kiwi".', 'Your cart'],
  ];
  for (const [action, fields, status, message, heading] of refusals) {
    const response = await postForm(shopper, `${BASE_URL}${action}`, fields);
    const what = `${action} ${JSON.stringify(fields)}`;
    assert.equal(response.status(), status, what);
    assert.match(response.headers()['content-type'], /^text\/html/, what);
    assert.equal(await errorMessage(shopper), message, what);
    assert.equal(await shopper.locator('h1').textContent(), heading, what);
    assert.equal(await headerCount(shopper), '1', what);
  }
  // Nothing refused changed the cart.
  await shopper.goto(`${BASE_URL}/shop/cart`);
  assert.deepEqual(await cartRows(shopper), ['apple × 1']);

  // A note too long is refused and kept in its field; a form too large is refused unread.
  const note = shopper.locator('textarea[name=note]');
  const longNote = 'n'.repeat(1001);
  await note.fill(longNote);
  await submit(shopper, shopper.getByRole('button', { name: 'Save the note' }));
  assert.equal(await errorMessage(shopper), 'Your note is 1001 characters long; at most 1000 fit.');
  assert.equal(await shopper.locator('textarea[name=note]').inputValue(), longNote);
  assert.equal(await shopper.locator('#cart-note').count(), 0);
  const tooLarge = await postForm(shopper, `${BASE_URL}/shop/cart/note`, { note: 'n'.repeat(20_000) });
  assert.equal(tooLarge.status(), 413);
  assert.equal(await errorMessage(shopper), 'The form is larger than 16 KiB, the most the shop reads.');

  // The checkout's steps.
  await shopper.goto(`${BASE_URL}/shop/checkout`);
  const blank = await postForm(shopper, `${BASE_URL}/shop/checkout/address`, { name: 'Ada', street: ' ', city: 'London' });
  assert.equal(blank.status(), 422);
  assert.equal(await errorMessage(shopper), 'Please fill in every field.');
  assert.equal(await shopper.getByLabel('City').inputValue(), 'London');
  await fillAddress(shopper);
  const teleport = await postForm(shopper, `${BASE_URL}/shop/checkout/delivery`, { delivery: 'teleport' });
  assert.equal(teleport.status(), 422);
  assert.equal(await errorMessage(shopper), 'There is no delivery "teleport": please choose standard or express.');
  assert.ok(await shopper.getByLabel('Express').isVisible());

  // An address that is no page, and a form's address visited.
  for (const [path, status, message] of [
    ['/shop/nowhere', 404, 'There is no page at "/shop/nowhere".'],
    ['/shop/cart/empty', 405, 'There is no page at "/shop/cart/empty": that address only takes the shop\'s forms.'],
  ]) {
    const response = await shopper.goto(`${BASE_URL}${path}`);
    assert.equal(response.status(), status, path);
    assert.equal(await errorMessage(shopper), message, path);
    assert.equal(await headerCount(shopper), '1', path);
  }
  await shopper.context().close();
});

test('at a phone\'s 390 px, no page scrolls sideways', async () => {
  const phone = await newVisitor(PHONE);
  await addToCart(phone, 'pippin-crate', 2);
  await addToCart(phone, 'cherry', 1);
  await phone.goto(`${BASE_URL}/shop/cart`);
  await phone.locator('textarea[name=note]').fill(`A gift: ${LONG_WORD}`);
  await submit(phone, phone.getByRole('button', { name: 'Save the note' }));

  const pages = ['/shop', '/shop/cart', '/shop/nowhere'];
  for (const path of pages) {
    await phone.goto(`${BASE_URL}${path}`);
    assert.equal(await overflowsSideways(phone), false, path);
  }
  await phone.goto(`${BASE_URL}/shop/cart`);
  assert.equal(await phone.locator('#cart-total').textContent(), pounds(2 * PRICES['pippin-crate'] + PRICES.cherry));
  await phone.screenshot({ path: join(OUTPUT_DIR, 'cart-390.png'), fullPage: true });

  await phone.goto(`${BASE_URL}/shop/checkout`);
  await fillAddress(phone);
  await submit(phone, phone.getByRole('button', { name: 'Continue' }));
  assert.equal(phone.url(), `${BASE_URL}/shop/checkout/confirm`);
  for (const path of ['/shop/checkout/address', '/shop/checkout/delivery', '/shop/checkout/confirm']) {
    await phone.goto(`${BASE_URL}${path}`);
    assert.equal(await overflowsSideways(phone), false, path);
  }
  await phone.context().close();
});

test('the favicon comes from the example', async () => {
  await visitor.goto(`${BASE_URL}/shop`);
  const href = await visitor.locator('link[rel=icon]').getAttribute('href');
  for (const path of [href, '/favicon.ico']) {
    const response = await visitor.request.get(`${BASE_URL}${path}`);
    assert.equal(response.status(), 200, path);
    assert.equal(response.headers()['content-type'], 'image/svg+xml', path);
    assert.match(await response.text(), /^<svg /, path);
  }
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
