// The seed's background tasks (Sanic's examples) as a JavaScript plugin,
// and probes the tests use. `taskhost build plugins/js-examples` makes
// js_examples.wasm; every `task()` export is a factory named after it.
import { task, Cancelled } from 'taskhost';
import * as hostApp from 'taskhost:plugin/app@0.5.0';

export const slow_work = task(
  (app, { ms }) => {
    app.sleep(ms);
    app.info('slow work done');
  },
  { description: 'Sleeps, then says so.', args: { ms: { type: 'integer', default: 100 } } },
);

export const even_slower = task(
  (app, { num }) => {
    for (let i = 0; i < num; i++) {
      app.sleep(10);
      app.debug(`step ${i}`);
    }
    app.info(`even slower: ${num} steps`);
    return num;
  },
  { description: 'Sleeps num x 10 ms, logging as it goes; returns num.', args: { num: { type: 'integer', default: 10 } } },
);

export const notify_server_started_after_five_seconds = task(
  (app, { delay_ms }) => {
    app.sleep(delay_ms);
    app.info('Server successfully started!');
  },
  { description: "Waits, then says the server started (Sanic's example).", args: { delay_ms: { type: 'integer', default: 5000 } } },
);

export const variables = task(
  (app) => ({
    url: app.variable('db_url'),
    missing: app.variable('no_such_variable', 'fallback'),
    all: app.variables(),
  }),
  { description: "Reads the plugin's variables through wasi:config/store." },
);

export const place = task(
  (app) => {
    app.addTask('noop', null, {
      name: 'placed',
      queue: 'held',
      key: 'acme',
      priority: 3,
      delayMs: 2000,
    });
    return { state: app.getTask('placed').state };
  },
  { description: 'Starts noop in queue held (key, priority, a 2 s delay) and reads its state back.' },
);

export const square = task(
  (app, { x, ms }) => {
    if (ms > 0) app.sleep(ms);
    return x * x;
  },
  {
    description: 'Returns x * x after sleeping ms: the child of fan_out.',
    args: { x: 'integer', ms: { type: 'integer', default: 0 } },
  },
);

export const supervise = task(
  (app) =>
    app.addTask('boom', null, {
      name: 'supervised',
      restart: { when: 'on-failure', intensity: 2, periodMs: 60000, initialMs: 10, maxMs: 100 },
    }),
  {
    description:
      'Starts boom as task supervised, restarted on failure (at most twice within a minute, 10 ms apart).',
  },
);

export const fan_out = task(
  (app, { n, ms }) => {
    const children = [];
    for (let x = 1; x <= n; x++) {
      children.push(app.addTask('square', { x, ms }, { child: true }));
    }
    return app.joinAll(children).reduce((sum, child) => sum + child.value(), 0);
  },
  {
    description: 'Starts n children of square (x = 1..n), joins them all, returns the sum of their results.',
    args: { n: 'integer', ms: { type: 'integer', default: 0 } },
  },
);

export const auto_inject = task(
  async (app, { delay_ms }) => {
    app.sleep(delay_ms);
    const info = { app: app.name(), worker: app.worker(), greeting: app.config('greeting') };
    app.info(`app ${info.app} on worker ${info.worker}`);
    return info;
  },
  { description: 'Reports what the injected app knows about itself (an async task).', args: { delay_ms: { type: 'integer', default: 0 } } },
);

export const sleeper = task(
  (app, { ms, marker }) => {
    try {
      try {
        app.sleep(ms);
      } catch (error) {
        if (!(error instanceof Cancelled)) throw error;
        // A careless catch that swallows the cancel: the task still ends
        // cancelled, because the SDK remembers it.
        app.info(`caught ${error.name}`);
      }
    } finally {
      if (marker) app.kv('cleanup').set(marker, 'cleaned up');
      app.info('cleanup ran');
    }
    return 'slept';
  },
  {
    description: 'Sleeps; when cancelled, cleans up in `finally` and records it in the bucket `cleanup`.',
    args: { ms: { type: 'integer', default: 60000 }, marker: 'string?' },
  },
);

export const glue_warmed = task(
  // The export glue's global, reached as the SDK's warm-up reaches it.
  () => hostApp.name.constructor('return globalThis.__taskhostWarmedUp === true')(),
  { description: "Whether the SDK warmed componentize-js's export glue in the snapshot (a test reads it)." },
);

export const noop = task(() => {}, { description: 'Does nothing: what a task costs by itself (the speed bench).' });

export const idle = task(
  (app) => {
    app.sleep(2n ** 63n);
  },
  { description: 'Sleeps until cancelled: an idle task (the speed bench).' },
);

export const spinner = task(
  () => {
    for (;;) {}
  },
  { description: 'Spins without a host call: only a forced cancel stops it.' },
);

export const typed = task((app, { num, label, flag }) => ({ num, label, flag }), {
  description: 'Echoes typed arguments.',
  args: { num: 'integer', label: 'string', flag: 'boolean?' },
});

function helperThatFails() {
  throw new TypeError('the js guest blew up');
}

export const boom = task(
  () => {
    helperThatFails();
  },
  { description: 'Throws, uncaught: the task fails with the stack.' },
);

export const hog = task(
  (app, { mb }) => {
    try {
      const block = new Uint8Array(mb * 1024 * 1024);
      block.fill(1);
      return `allocated ${block.length}`;
    } catch (error) {
      return `caught ${error instanceof Error ? error.name : typeof error}: ${String(error)}`;
    }
  },
  { description: 'Allocates `mb` MiB, reporting the error instead of dying.', args: { mb: { type: 'integer', default: 200 } } },
);

export const fetch_text = task(
  async (app, { url }) => {
    const response = await fetch(url);
    const body = await response.text();
    app.info(`fetched ${url}: ${response.status}`);
    return { status: response.status, body };
  },
  { description: 'GETs `url` with fetch() (app.toml must allow it); returns {status, body}.', args: { url: 'string' } },
);

export const feed = task(
  (app, { request, events, event }) => {
    // The seed's websocket handler: a receiver named after the connection
    // (or this task), "A message" sent on each event, and the receiver
    // cancelled and purged however the loop ended (the client closing
    // cancels this task).
    const connection = request ? app.connection(request) : null;
    const receiver = `receiver:${connection ? connection.id : app.id()}`;
    app.addTask('receiver', connection ? { connection: connection.id } : {}, { name: receiver });
    let handled = 0;
    try {
      while (events === null || handled < events) {
        app.waitEvent(event);
        if (connection) connection.send('A message');
        handled += 1;
      }
      return handled;
    } finally {
      try {
        app.cancelTask(receiver);
      } finally {
        app.purgeTasks();
      }
    }
  },
  {
    description: "The seed's websocket handler: starts receiver:<id>, sends \"A message\" on each event, cancels the receiver when it ends.",
    args: {
      request: { type: 'object', default: null },
      events: { type: 'integer', default: null },
      event: { type: 'string', default: 'my.custom.event' },
    },
  },
);

export const receiver = task(
  (app, { connection, event }) => {
    if (connection !== null) {
      for (const message of app.connection(connection)) app.info(`received ${message}`);
      return;
    }
    for (;;) {
      const payload = app.waitEvent(event);
      if (payload !== null) app.info(`received ${payload}`);
    }
  },
  {
    description: 'Logs what the client of `connection` sends, or every payload of `event`: the receiving half of `feed`.',
    args: { connection: { type: 'integer', default: null }, event: { type: 'string', default: 'message' } },
  },
);

export const tour = task(
  (app) => {
    app.addTask('sleeper', { ms: 60000 }, { name: 'js-napper' });
    const seen = app.getTask('js-napper');
    let missing = 'found?';
    try {
      app.getTask('nobody');
    } catch (error) {
      missing = error.name;
    }
    let bad = 'accepted?';
    try {
      app.addTask('typed', { num: 'x', label: 'l' });
    } catch (error) {
      bad = error.name;
    }
    const cancelled = app.cancelTask('js-napper');
    const woken = app.dispatch('js.nobody-listens', 'x');
    const listed = app.tasks().map((t) => t.name);
    const purged = app.purgeTasks();
    return {
      seen: seen.state,
      missing,
      bad_args: bad,
      cancelled: cancelled.state,
      woken,
      listed: listed.includes('js-napper'),
      purged: purged >= 1,
      greeting: app.config('greeting'),
      id_type: typeof app.id(),
    };
  },
  { description: 'Walks the task registry, events and config from JavaScript.' },
);

// Plain functions of a default-exported object are factories too (their
// args unchecked).
export default {
  plain_echo(app, args) {
    return args;
  },
};

export const resumable = task(
  (app, { short_ms, long_ms }) => {
    const drawn = Math.floor(Math.random() * 2 ** 48);
    const now = Date.now();
    app.info(`drew ${drawn} at ${now}`);
    const runs = app.kv('resume').increment('runs', 1);
    [short_ms, short_ms, long_ms].forEach((pause, i) => {
      app.sleep(pause);
      app.info(`slept ${i + 1}`);
    });
    return { drawn, at: now, runs, attempt: app.attempt() };
  },
  {
    description: 'For the resume tests: draws a random number and reads the clock (logging both), counts a run in bucket `resume`, sleeps short_ms twice and long_ms once; returns what it drew and read, the count and its attempt.',
    args: { short_ms: { type: 'integer', default: 100 }, long_ms: { type: 'integer', default: 8000 } },
  },
);
