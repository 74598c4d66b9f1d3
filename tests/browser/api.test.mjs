// The JSON API's answers to requests it cannot take, against the example at BASE_URL (run.sh
// starts it): every one is JSON, `{"error": "…"}`, with the status that says what went wrong,
// and none changes the cart.
import assert from 'node:assert/strict';
import { test } from 'node:test';

const BASE_URL = process.env.BASE_URL;
assert.match(BASE_URL ?? '', /^http:\/\/127\.0\.0\.1:\d+$/, 'the example must be at http://127.0.0.1:PORT');

/** A visitor of the API: keeps the session cookie between calls, as `curl -c jar -b jar` does. */
function apiVisitor() {
  let cookie = '';
  return async (method, path) => {
    const response = await fetch(`${BASE_URL}${path}`, {
      method,
      headers: cookie ? { cookie } : {},
    });
    const setCookie = response.headers.get('set-cookie');
    if (setCookie) cookie = setCookie.split(';')[0];
    const text = await response.text();
    const what = `${method} ${path.slice(0, 80)}`;
    assert.equal(response.headers.get('content-type'), 'application/json', `${what}: ${text}`);
    return { status: response.status, body: JSON.parse(text) };
  };
}

test('a quantity that is not 1 to 99 is a 400 that says so', async () => {
  const call = apiVisitor();
  for (const [quantity, error] of [
    ['0', 'the quantity must be a whole number from 1 to 99, not "0"'],
    ['abc', 'the quantity must be a whole number from 1 to 99, not "abc"'],
    ['-1', 'the quantity must be a whole number from 1 to 99, not "-1"'],
    ['', 'the quantity is empty: give a whole number from 1 to 99'],
    ['100', 'the quantity must be a whole number from 1 to 99, not "100"'],
    ['4294967295', 'the quantity must be a whole number from 1 to 99, not "4294967295"'],
  ]) {
    assert.deepEqual(await call('POST', `/cart/apple?quantity=${quantity}`), { status: 400, body: { error } });
  }
  assert.deepEqual(await call('POST', '/cart/apple?quantity=1&quantity=2'), {
    status: 400,
    body: { error: 'give the quantity once' },
  });
  assert.deepEqual((await call('GET', '/cart')).body.items, {});
});

test('a quantity that would pass 99 of a product is a 409, and the cart keeps what it had', async () => {
  const call = apiVisitor();
  assert.equal((await call('POST', '/cart/apple?quantity=99')).status, 200);
  assert.deepEqual(await call('POST', '/cart/apple'), {
    status: 409,
    body: { error: 'the cart holds 99 × Apple; 1 more would pass the limit of 99 per product' },
  });
  const cart = (await call('GET', '/cart')).body;
  assert.deepEqual(cart.items, { apple: 99 });
  assert.equal(cart.total_pence, 99 * 45);
});

test('an item that is no product is a 404, a name longer than any product\'s a 414', async () => {
  const call = apiVisitor();
  const noKiwi = { status: 404, body: { error: 'there is no product "kiwi"' } };
  assert.deepEqual(await call('POST', '/cart/kiwi'), noKiwi);
  assert.deepEqual(await call('DELETE', '/cart/kiwi'), noKiwi);
  assert.deepEqual(await call('POST', '/viewed/kiwi'), noKiwi);
  assert.deepEqual(await call('DELETE', '/cart/banana'), {
    status: 404,
    body: { error: '"banana" is not in the cart' },
  });
  assert.deepEqual(await call('POST', '/cart/%FF'), {
    status: 400,
    body: { error: 'the item name in the URL cannot be read: it must be UTF-8 text' },
  });
  // 60,000 bytes: under hyper's own limit on a request line (64 KiB), so the example answers.
  assert.deepEqual(await call('POST', `/cart/${'a'.repeat(60_000)}`), {
    status: 414,
    body: { error: 'the item name is 60000 bytes long; no product name is longer than 64' },
  });
});

test('a route the API does not have is a 404 or a 405 that lists the routes', async () => {
  const call = apiVisitor();
  const routes =
    'it takes GET /cart, POST /cart/{item}?quantity=N, DELETE /cart/{item}, DELETE /cart, ' +
    'GET /viewed and POST /viewed/{item}';
  assert.deepEqual(await call('POST', '/cart/'), {
    status: 404,
    body: { error: `the API has no POST "/cart/": ${routes}` },
  });
  assert.deepEqual(await call('GET', '/viewed/apple/more'), {
    status: 404,
    body: { error: `the API has no GET "/viewed/apple/more": ${routes}` },
  });
  assert.deepEqual(await call('PUT', '/cart'), {
    status: 405,
    body: { error: `the API has no PUT "/cart": ${routes}` },
  });
});
