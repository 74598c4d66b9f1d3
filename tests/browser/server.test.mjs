// The example's server under clients that misbehave, and under a store that fails. Each test
// starts an instance of its own (EXAMPLE: the built example's path; run.sh sets it) on a free
// port of 127.0.0.1, and stops it.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const EXAMPLE = process.env.EXAMPLE;
assert.ok(EXAMPLE, 'EXAMPLE must be the path of the built example');

// The example's `serve::SHUTDOWN_GRACE`, and the margin a loaded machine gets on top.
const SHUTDOWN_GRACE_MS = 5_000;
const MARGIN_MS = 3_000;

/**
 * Starts the example with `settings` on top of the defaults and resolves once it listens:
 * `{ url, port, log(), exited }`, where `exited` resolves to `{ code, signal, at }`.
 */
async function startExample(settings = {}) {
  const env = { ...process.env, PORT: '0', NO_COLOR: '1', ...settings };
  for (const name of ['SESSION_STORE', 'CART_EXPIRY_SECS', 'CHECKOUT_EXPIRY_SECS', 'HEADER_READ_TIMEOUT_SECS']) {
    if (!(name in settings)) delete env[name];
  }
  const child = spawn(EXAMPLE, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() }));
  });
  const url = await new Promise((resolve, reject) => {
    const read = (chunk) => {
      output += chunk;
      const found = output.match(/listening on (http:\/\/127\.0\.0\.1:(\d+))/);
      if (found) resolve(found[1]);
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    exited.then(() => reject(new Error(`the example exited before listening:\n${output}`)));
  });
  return { child, url, port: Number(new URL(url).port), log: () => output, exited };
}

/** A TCP connection to the example that has sent half a request head, and stays open. */
async function halfSentRequest(port) {
  const socket = connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.write('GET /shop HTTP/1.1\r\nHost: 127.0.0.1\r\n');
  const closed = new Promise((resolve) => {
    let received = '';
    socket.on('data', (chunk) => {
      received += chunk;
    });
    socket.on('error', () => {});
    socket.on('close', () => resolve({ received, at: Date.now() }));
  });
  return { socket, closed };
}

/** Resolves to `promise`'s value, or rejects after `ms` with `what`. */
function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Stops the example with Ctrl-C's signal and waits for it; kills it if it does not stop. */
async function stop(example) {
  example.child.kill('SIGINT');
  try {
    return await within(SHUTDOWN_GRACE_MS + MARGIN_MS, example.exited, 'stopping the example');
  } catch (err) {
    example.child.kill('SIGKILL');
    throw err;
  }
}

test('Ctrl-C stops the server within its grace period even while a request is half sent', async () => {
  const example = await startExample();
  const half = await halfSentRequest(example.port);
  // The server is alive and answers others meanwhile.
  assert.equal((await fetch(`${example.url}/shop`)).status, 200);

  const signalled = Date.now();
  const { code, at } = await stop(example);
  assert.equal(code, 0, example.log());
  assert.ok(at - signalled <= SHUTDOWN_GRACE_MS + MARGIN_MS, `stopped after ${at - signalled} ms`);
  assert.match(example.log(), /connections still open after 5 s of shutdown are dropped/);
  await half.closed;
});

test('a connection that does not send its request head in time is closed', async () => {
  const example = await startExample({ HEADER_READ_TIMEOUT_SECS: '1' });
  try {
    const opened = Date.now();
    const half = await halfSentRequest(example.port);
    const { received, at } = await within(1_000 + MARGIN_MS, half.closed, 'the server closing the connection');
    assert.equal(received, '', 'no response to half a request');
    assert.ok(at - opened >= 900, `closed after ${at - opened} ms, before the timeout`);
    // A whole request is still answered.
    assert.equal((await fetch(`${example.url}/shop`)).status, 200);
  } finally {
    await stop(example);
  }
});

test('a store that fails is a JSON error for the API and a page for the shop', async (t) => {
  try {
    execFileSync('sqlite3', ['-version']);
  } catch {
    t.skip('needs the sqlite3 command (apt-get install sqlite3)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'shop-store-'));
  const database = join(dir, 'sessions.db');
  const example = await startExample({ SESSION_STORE: `sqlite://${database}` });
  try {
    const added = await fetch(`${example.url}/cart/apple`, { method: 'POST' });
    assert.equal(added.status, 200);
    const cookie = added.headers.get('set-cookie').split(';')[0];
    // The store loses its table under the running example.
    execFileSync('sqlite3', [database, 'DROP TABLE tower_sessions']);

    const api = await fetch(`${example.url}/cart`, { headers: { cookie } });
    assert.equal(api.status, 500);
    assert.equal(api.headers.get('content-type'), 'application/json');
    assert.deepEqual(await api.json(), { error: 'the server could not handle the request; its log says why' });

    const page = await fetch(`${example.url}/shop/cart`, { headers: { cookie } });
    assert.equal(page.status, 500);
    assert.match(page.headers.get('content-type'), /^text\/html/);
    assert.match(await page.text(), /<p class="error"[^>]*>The server could not handle the request; its log says why\.<\/p>/);
    assert.match(example.log(), /no such table: tower_sessions/);
  } finally {
    await stop(example);
    rmSync(dir, { recursive: true, force: true });
  }
});
