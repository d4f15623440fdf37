// taskhost's guest SDK for JavaScript (and TypeScript): task factories as
// exported functions.
//
//     import { task } from 'taskhost';
//
//     export const slow_work = task((app, { ms }) => {
//       app.sleep(ms);
//       app.info('slow work done');
//     }, { description: 'Sleeps, then says so.', args: { ms: { type: 'integer', default: 100 } } });
//
// `taskhost build` bundles a directory whose package.json has a
// `"taskhost": { "main": "app.js" }` entry with this SDK and turns it into
// a component (componentize-js). Every export made with `task()` is a
// factory named after its export. Every task runs in its own instance;
// `app` speaks for that task alone.
//
// A cancelled task sees a `Cancelled` error. JavaScript has no exception a
// `catch` cannot see, so the SDK also remembers the cancel: a task that
// swallows it still ends `cancelled`, and every later waiting call throws
// `Cancelled` again. Other host errors are `TaskhostError` subclasses; any
// other uncaught error fails the task with its stack as the error.

import * as host from 'taskhost:plugin/app@0.5.0';
import * as connections from 'taskhost:plugin/connections@0.5.0';
import * as store from 'wasi:keyvalue/store@0.2.0-draft2';
import * as atomics from 'wasi:keyvalue/atomics@0.2.0-draft2';
import * as wasiConfig from 'wasi:config/store@0.2.0-rc.1';
import * as postgresHost from 'taskhost:db/postgres@0.1.0';
import * as redisHost from 'taskhost:db/redis@0.1.0';

/** The task is being cancelled: let it propagate (clean up in `finally`). */
export class Cancelled extends Error {
  constructor() {
    super('cancelled');
    this.name = 'Cancelled';
  }
}

/** An error the host returned; `kind` names it as the WIT does. */
export class TaskhostError extends Error {
  constructor(message = '', kind = 'failed') {
    super(message);
    this.name = 'TaskhostError';
    this.kind = kind;
  }
}

function errorClass(name, kind) {
  const cls = class extends TaskhostError {
    constructor(message = '') {
      super(message, kind);
      this.name = name;
    }
  };
  Object.defineProperty(cls, 'name', { value: name });
  return cls;
}

export const UnknownFactory = errorClass('UnknownFactory', 'unknown-factory');
export const InvalidArgs = errorClass('InvalidArgs', 'invalid-args');
export const Failed = errorClass('Failed', 'failed');
export const NotFound = errorClass('NotFound', 'not-found');
export const DuplicateName = errorClass('DuplicateName', 'duplicate-name');
export const UnknownPlugin = errorClass('UnknownPlugin', 'unknown-plugin');
export const LimitExceeded = errorClass('LimitExceeded', 'limit');

const BY_KIND = {
  'unknown-factory': UnknownFactory,
  'invalid-args': InvalidArgs,
  failed: Failed,
  'not-found': NotFound,
  'duplicate-name': DuplicateName,
  'unknown-plugin': UnknownPlugin,
  limit: LimitExceeded,
};

/** Throw it to fail the task for good: its retry policy does not try again. */
export class Permanent extends Error {
  constructor(message = '') {
    super(message);
    this.name = 'Permanent';
  }
}

/** Set once a host call said `cancelled`: the task ends cancelled whatever
 * it does next. */
let cancelSeen = false;

/** The WIT error (`payload`) a host call threw; a cancel is noted and
 * thrown as `Cancelled`, anything that is not a WIT error rethrown. */
function witError(error) {
  const payload = error && error.payload;
  if (!payload || typeof payload.tag !== 'string') throw error;
  if (payload.tag === 'cancelled') {
    cancelSeen = true;
    throw new Cancelled();
  }
  return payload;
}

/** Calls a host function, turning its WIT error into the SDK's. */
function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (error) {
    const payload = witError(error);
    const cls = BY_KIND[payload.tag] || Failed;
    throw new cls(payload.val === undefined ? payload.tag : String(payload.val));
  }
}

/** A u64 from the host as a Number when it fits exactly, else a BigInt. */
function fromU64(value) {
  if (value === undefined || value === null) return null;
  const big = BigInt(value);
  return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** A count of milliseconds (Number or BigInt) as the host's u64. */
/** `addTask`'s `restart` option as the WIT's restart-policy. */
function restartPolicy(restart) {
  if (restart === undefined) return undefined;
  const spec = typeof restart === 'string' ? { when: restart } : restart;
  if (spec.when !== 'always' && spec.when !== 'on-failure') {
    throw new InvalidArgs(
      `restart.when must be 'always' or 'on-failure', got ${JSON.stringify(spec.when)}`,
    );
  }
  const ms = (v, what) => (v === undefined ? undefined : toU64(v, what));
  return {
    when: spec.when,
    intensity: spec.intensity,
    periodMs: ms(spec.periodMs, 'restart.periodMs'),
    initialMs: ms(spec.initialMs, 'restart.initialMs'),
    maxMs: ms(spec.maxMs, 'restart.maxMs'),
  };
}

function toU64(value, what) {
  if (typeof value === 'bigint') {
    if (value < 0n) throw new RangeError(`${what} must not be negative`);
    return value;
  }
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${what} must be a non-negative number, got ${value}`);
  }
  return BigInt(Math.ceil(value));
}

/** A snapshot of one task of the caller's worker. */
function taskInfo(info) {
  const state = info.state;
  return {
    id: fromU64(info.id),
    name: info.name ?? null,
    plugin: info.plugin,
    pluginVersion: info.pluginVersion,
    factory: info.factory,
    worker: info.worker ?? null,
    state,
    createdAtMs: fromU64(info.createdAtMs),
    startedAtMs: fromU64(info.startedAtMs),
    endedAtMs: fromU64(info.endedAtMs),
    result: info.result ?? null,
    error: info.error ?? null,
    cancelStage: info.cancelStage ?? null,
    ended: state === 'done' || state === 'failed' || state === 'cancelled',
    /** The result of a `done` task, decoded from its JSON text; throws
     * `Failed` naming the task's state (and why it failed) otherwise. */
    value() {
      if (state === 'done' && info.result !== undefined && info.result !== null) {
        return JSON.parse(info.result);
      }
      const why = info.error ? `: ${info.error}` : '';
      throw new Failed(`task ${fromU64(info.id)} (${info.factory}) is ${state}${why}`);
    },
  };
}

/** A task to join, as the WIT names it: an id (Number or BigInt), or a
 * name. */
function taskRef(task) {
  if (typeof task === 'string') return { tag: 'name', val: task };
  if (typeof task === 'number' || typeof task === 'bigint') {
    return { tag: 'id', val: toU64(task, 'a task id') };
  }
  throw new InvalidArgs(`join: a task is its id (a number) or its name (a string), not ${task}`);
}

/** A timeout in milliseconds for the host, or none. */
function timeoutOf(timeoutMs) {
  return timeoutMs === undefined || timeoutMs === null ? undefined : toU64(timeoutMs, 'timeoutMs');
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Calls a wasi:keyvalue function, mapping its errors: `limit: ...` to
 * `LimitExceeded`, a cancel to `Cancelled`, the rest to `Failed`. */
function kvCall(fn, ...args) {
  try {
    return fn(...args);
  } catch (error) {
    const payload = error && error.payload;
    if (!payload) throw error;
    const message = payload.val !== undefined ? String(payload.val) : payload.tag;
    if (message.startsWith('limit: ')) throw new LimitExceeded(message.slice('limit: '.length));
    if (message.includes('cancelled')) {
      cancelSeen = true;
      throw new Cancelled();
    }
    throw new Failed(message);
  }
}

/** A key-value bucket (`app.kv(name)`): the plugin's own, or a shared one
 * app.toml grants. Values are JSON. */
export class Bucket {
  constructor(bucket) {
    this._bucket = bucket;
  }

  get(key, fallback = null) {
    const raw = kvCall(() => this._bucket.get(key));
    return raw === undefined ? fallback : JSON.parse(decoder.decode(raw));
  }

  set(key, value) {
    kvCall(() => this._bucket.set(key, encoder.encode(JSON.stringify(value))));
  }

  delete(key) {
    kvCall(() => this._bucket.delete(key));
  }

  exists(key) {
    return kvCall(() => this._bucket.exists(key));
  }

  keys() {
    const keys = [];
    let cursor;
    do {
      const page = kvCall(() => this._bucket.listKeys(cursor));
      keys.push(...page.keys);
      cursor = page.cursor;
    } while (cursor !== undefined);
    return keys;
  }

  /** Adds `delta` atomically; returns the new value. */
  increment(key, delta = 1) {
    return Number(kvCall(atomics.increment, this._bucket, key, BigInt(delta)));
  }
}

/** Calls a wasi:config/store function, throwing `Failed` naming `what`. */
function variableCall(what, fn) {
  try {
    return fn();
  } catch (error) {
    const payload = error && error.payload;
    if (!payload) throw error;
    throw new Failed(`cannot read ${what}: ${payload.val !== undefined ? payload.val : payload.tag}`);
  }
}

/** A Postgres or Redis call failed. `code` is its case: `denied` (not in
 * the plugin's `tcp` grant), `bad-url`, `connection-failed`,
 * `query-failed` (the server refused it) or `conversion-failed`. */
export class DatabaseError extends Failed {
  constructor(message = '', code = 'failed') {
    super(message);
    this.name = 'DatabaseError';
    this.code = code;
  }
}

/** Calls a taskhost:db function: `limit` becomes `LimitExceeded`, a
 * cancel `Cancelled`, the rest `DatabaseError`. */
function dbCall(fn) {
  try {
    return fn();
  } catch (error) {
    const payload = witError(error);
    const message = payload.val === undefined ? payload.tag : String(payload.val);
    if (payload.tag === 'limit') throw new LimitExceeded(message);
    throw new DatabaseError(message, payload.tag);
  }
}

/** An s64 from the host as a Number when it fits exactly, else a BigInt. */
function fromI64(value) {
  const big = BigInt(value);
  return big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= BigInt(Number.MIN_SAFE_INTEGER)
    ? Number(big)
    : big;
}

/** A string, number, bigint or bytes as the `text`, `int64`, `float64`
 * or `binary` case both interfaces' values have; undefined otherwise. */
function scalar(value) {
  switch (typeof value) {
    case 'string':
      return { tag: 'text', val: value };
    case 'bigint':
      return { tag: 'int64', val: value };
    case 'number':
      return Number.isSafeInteger(value) ? { tag: 'int64', val: BigInt(value) } : { tag: 'float64', val: value };
    default:
      return value instanceof Uint8Array ? { tag: 'binary', val: value } : undefined;
  }
}

/** A JavaScript value as a Postgres parameter (sent as text, so the server
 * parses it as the type its place has). */
function pgParam(value) {
  if (value === null || value === undefined) return { tag: 'null' };
  if (typeof value === 'boolean') return { tag: 'boolean', val: value };
  if (value instanceof Date) return { tag: 'text', val: value.toISOString() };
  return scalar(value) || { tag: 'text', val: JSON.stringify(value) };
}

/** Bytes from the host as a Uint8Array, whatever view the bindings made. */
function bytesOf(value) {
  return value instanceof Uint8Array ? value : Uint8Array.from(value);
}

function fromPg(value) {
  switch (value.tag) {
    case 'null':
      return null;
    case 'int64':
      return fromI64(value.val);
    case 'binary':
      return bytesOf(value.val);
    default:
      return value.val;
  }
}

/** Closes a host resource now rather than at the task's end. */
function dispose(resource) {
  if (resource && typeof resource[Symbol.dispose] === 'function') resource[Symbol.dispose]();
}

/** A Postgres connection the host holds (`app.postgres(url)`). */
export class Postgres {
  constructor(url) {
    this._conn = dbCall(() => postgresHost.Connection.open(url));
  }

  /** Runs `statement` with `params` (`$1`, `$2`...); returns its rows as
   * objects keyed by column name. */
  query(statement, params = []) {
    const set = dbCall(() => this._conn.query(statement, params.map(pgParam)));
    const names = set.columns.map((column) => column.name);
    return set.rows.map((row) => {
      const out = {};
      row.forEach((value, i) => {
        out[names[i]] = fromPg(value);
      });
      return out;
    });
  }

  /** Runs `statement` with `params`; returns how many rows it changed.
   * Without params it may hold several statements (a schema script). */
  execute(statement, params = []) {
    return fromI64(dbCall(() => this._conn.execute(statement, params.map(pgParam))));
  }

  close() {
    dispose(this._conn);
  }
}

/** A JavaScript value as a Redis command's argument. */
function redisArg(value) {
  if (typeof value === 'boolean') return { tag: 'int64', val: value ? 1n : 0n };
  return scalar(value) || { tag: 'text', val: JSON.stringify(value) };
}

/** A reply, from its prefix-ordered elements back into nested arrays. */
function fromReplies(replies) {
  let next = 0;
  const one = () => {
    const reply = replies[next++];
    switch (reply.tag) {
      case 'nil':
        return null;
      case 'int64':
        return fromI64(reply.val);
      case 'array': {
        const out = [];
        for (let i = 0; i < reply.val; i++) out.push(one());
        return out;
      }
      case 'binary':
        return bytesOf(reply.val);
      default:
        return reply.val;
    }
  };
  return one();
}

/** A Redis connection the host holds (`app.redis(url)`). */
export class Redis {
  constructor(url) {
    this._conn = dbCall(() => redisHost.Connection.open(url));
  }

  /** Runs one command: `command('HSET', 'h', 'field', 1)`. Bulk strings
   * come back as strings (or a Uint8Array if not UTF-8), integers as
   * numbers, nil as null, arrays as arrays. */
  command(name, ...args) {
    return fromReplies(dbCall(() => this._conn.execute(name, args.map(redisArg))));
  }

  get(key) {
    return this.command('GET', key);
  }

  set(key, value) {
    return this.command('SET', key, value);
  }

  /** Adds `by` to the integer at `key` atomically; returns the new value. */
  incr(key, by = 1) {
    return this.command('INCRBY', key, by);
  }

  del(...keys) {
    return this.command('DEL', ...keys);
  }

  close() {
    dispose(this._conn);
  }
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

/** The handle to the app a task belongs to (Sanic's `app`). */
/**
 * A websocket connection of the host's listener: a `[[routes]] websocket`
 * route starts a task per connection and passes its id in
 * `request.connection`. Any task of the plugin given the id may use it (the
 * seed's receiver does). The client closing cancels the connection's task
 * (`Cancelled`); the task returning closes the connection.
 */
export class Connection {
  constructor(id) {
    this.id = fromU64(id);
  }

  /** The client's next message (a string, or a Uint8Array for binary);
   * null once the connection is over. */
  recv() {
    const message = call(connections.recv, toU64(this.id, 'a connection id'));
    if (message === undefined || message === null) return null;
    return message.tag === 'text' ? message.val : new Uint8Array(message.val);
  }

  /** Queues a message (a string, or bytes) for the client; waits while its
   * buffer is full, fails once the client was dropped or closed. */
  send(message) {
    let wit;
    if (typeof message === 'string') wit = { tag: 'text', val: message };
    else if (message instanceof ArrayBuffer) wit = { tag: 'binary', val: new Uint8Array(message) };
    else if (ArrayBuffer.isView(message)) {
      wit = { tag: 'binary', val: new Uint8Array(message.buffer, message.byteOffset, message.byteLength) };
    } else throw new TypeError(`send takes a string or bytes, not ${typeof message}`);
    call(connections.send, toU64(this.id, 'a connection id'), wit);
  }

  /** Closes with `code` (1000, or 3000-4999) after what was queued. */
  close(code = 1000, reason = '') {
    call(connections.close, toU64(this.id, 'a connection id'), code, reason);
  }

  /** The client's messages until the connection is over. */
  *[Symbol.iterator]() {
    for (;;) {
      const message = this.recv();
      if (message === null) return;
      yield message;
    }
  }
}

export class App {
  /** The app's name (`name` in app.toml). */
  name() {
    return host.name();
  }

  /** This task's worker index; null for a `scope = "main"` task. */
  worker() {
    return host.worker() ?? null;
  }

  /** This task's id: unique in the host. */
  id() {
    return fromU64(host.taskId());
  }

  /** 1, or more when a retry or a re-run after a crash runs it again. */
  attempt() {
    return host.attempt();
  }

  /** A durable task's key, for effects that must not happen twice. */
  idempotencyKey() {
    return host.idempotencyKey() ?? null;
  }

  /** Makes this attempt's failure final. */
  stopRetrying() {
    host.stopRetrying();
  }

  /** The value of `key` in app.toml's `[config]`, decoded. */
  config(key, fallback = null) {
    const raw = host.config(key);
    return raw === undefined ? fallback : JSON.parse(raw);
  }

  /** The plugin's variable `key` (`[plugins.NAME.variables]`, through
   * wasi:config/store): a string, or `fallback` when it is not set. */
  variable(key, fallback = null) {
    const value = variableCall(`variable \`${key}\``, () => wasiConfig.get(key));
    return value === undefined ? fallback : value;
  }

  /** All of the plugin's variables, as an object by name. */
  variables() {
    return Object.fromEntries(variableCall("the plugin's variables", () => wasiConfig.getAll()));
  }

  log(level, message) {
    if (!LEVELS.includes(level)) throw new RangeError(`log level ${level} is not one of ${LEVELS.join(', ')}`);
    host.log(level, String(message));
  }

  debug(message) {
    this.log('debug', message);
  }

  info(message) {
    this.log('info', message);
  }

  warn(message) {
    this.log('warn', message);
  }

  error(message) {
    this.log('error', message);
  }

  /** Sleeps `ms` milliseconds; throws `Cancelled` when cancelled. */
  sleep(ms) {
    call(host.sleep, toU64(ms, 'sleep(ms)'));
  }

  /** Starts a task on this worker; returns its id once its factory
   * accepted `args`. Options: `name`, `plugin`, `retry` ({attempts,
   * initialMs, maxMs, exponential, jitter}), `durable`, `idempotencyKey`,
   * and `queue`, `key`, `priority`, `delayMs`, `runAtMs`: the task waits in
   * that queue (`default` without `queue`) until it lets it start, and the
   * id comes at once. With `child: true` it is cancelled when this task is
   * cancelled or this attempt ends (not with `durable`). With `restart`
   * ('always', 'on-failure', or {when, intensity, periodMs, initialMs,
   * maxMs}) it is supervised: started again each time a run ends. */
  addTask(factory, args = null, options = {}) {
    const { name, plugin, retry, durable = false, idempotencyKey, child = false } = options;
    const restart = restartPolicy(options.restart);
    const { queue, key, priority, delayMs, runAtMs } = options;
    const text = JSON.stringify(args ?? null);
    const placed = [queue, key, priority, delayMs, runAtMs].some((v) => v !== undefined);
    if (
      retry === undefined &&
      !durable &&
      idempotencyKey === undefined &&
      !placed &&
      !child &&
      restart === undefined
    ) {
      return fromU64(call(host.addTask, plugin, factory, text, name));
    }
    let start;
    if (delayMs !== undefined) {
      start = { tag: 'delay-ms', val: toU64(delayMs, 'delayMs') };
    } else if (runAtMs !== undefined) {
      start = { tag: 'run-at-ms', val: toU64(runAtMs, 'runAtMs') };
    }
    const placement = placed
      ? { queue: queue ?? 'default', key, priority, start }
      : undefined;
    const taskOptions = {
      name,
      retry:
        retry === undefined
          ? undefined
          : {
              attempts: retry.attempts,
              initialMs: toU64(retry.initialMs ?? 200, 'retry.initialMs'),
              maxMs: toU64(retry.maxMs ?? 60000, 'retry.maxMs'),
              exponential: retry.exponential ?? true,
              jitter: retry.jitter ?? true,
            },
      durable,
      idempotencyKey,
      placement,
      child,
      restart,
    };
    return fromU64(call(host.startTask, plugin, factory, text, taskOptions));
  }

  /** Waits until `task` (an id, or a name on this worker) has ended and
   * returns its final info (`info.value()` decodes a done task's result);
   * null when `timeoutMs` passes first (the task goes on). Throws
   * `NotFound`, `InvalidArgs` for this task itself or its parent,
   * `Cancelled` as soon as this task is cancelled. */
  join(task, { timeoutMs } = {}) {
    const ended = call(host.join, taskRef(task), timeoutOf(timeoutMs));
    return ended === undefined || ended === null ? null : taskInfo(ended);
  }

  /** `join` for every task of `tasks` (fan-in): their final infos in the
   * same order; null when `timeoutMs` passes first. */
  joinAll(tasks, { timeoutMs } = {}) {
    const ended = call(host.joinAll, Array.from(tasks, taskRef), timeoutOf(timeoutMs));
    return ended === undefined || ended === null ? null : ended.map(taskInfo);
  }

  /** `join` for the first of `tasks` to end: `[index, info]`; null when
   * `timeoutMs` passes first. */
  joinAny(tasks, { timeoutMs } = {}) {
    const ended = call(host.joinAny, Array.from(tasks, taskRef), timeoutOf(timeoutMs));
    return ended === undefined || ended === null ? null : [ended[0], taskInfo(ended[1])];
  }

  getTask(name) {
    return taskInfo(call(host.getTask, name));
  }

  /** Cancels the task `name` and returns its final info once ended. */
  cancelTask(name) {
    return taskInfo(call(host.cancelTask, name));
  }

  tasks() {
    return host.tasks().map(taskInfo);
  }

  purgeTasks() {
    return host.purgeTasks();
  }

  /** Wakes every task waiting for `event`; returns how many woke. */
  dispatch(event, payload = '') {
    return call(host.dispatch, event, String(payload));
  }

  /** The next payload of `event`, or null when `timeoutMs` passes first. */
  waitEvent(event, { timeoutMs } = {}) {
    const timeout = timeoutMs === undefined ? undefined : toU64(timeoutMs, 'timeoutMs');
    return call(host.waitEvent, event, timeout) ?? null;
  }

  /** Adds a schedule with app.toml's `[[schedules]]` fields. */
  addSchedule(spec) {
    call(host.addSchedule, JSON.stringify(spec));
  }

  removeSchedule(name) {
    return call(host.removeSchedule, name);
  }

  /** The websocket connection of a route's `request` (or by its id). */
  connection(request) {
    if (request !== null && typeof request === 'object') {
      if (request.connection === undefined || request.connection === null) {
        throw new Failed('this request has no websocket connection');
      }
      return new Connection(request.connection);
    }
    return new Connection(request);
  }

  /** Opens a key-value bucket. */
  kv(bucket) {
    return new Bucket(kvCall(store.open, bucket));
  }

  /** Connects to Postgres (`postgres://USER:PASSWORD@HOST:PORT/DB`); the
   * address must be in the plugin's `[plugins.NAME.grants] tcp`. */
  postgres(url) {
    return new Postgres(url);
  }

  /** Connects to Redis (`redis://[:PASSWORD@]HOST:PORT[/DB]`); the address
   * must be in the plugin's `[plugins.NAME.grants] tcp`. */
  redis(url) {
    return new Redis(url);
  }
}

const TASK = Symbol('taskhost.task');
const TYPES = ['integer', 'number', 'string', 'boolean', 'object', 'array', 'any'];

/** An argument's declared type as `{type, optional, default}`. */
function argSpec(factory, name, spec) {
  let parsed;
  if (typeof spec === 'string') {
    const optional = spec.endsWith('?');
    parsed = { type: optional ? spec.slice(0, -1) : spec, optional };
  } else if (spec && typeof spec === 'object') {
    parsed = { type: spec.type ?? 'any', optional: !!spec.optional || 'default' in spec, default: spec.default };
  } else {
    throw new TypeError(`task ${factory}: argument ${name} must be declared as a type name or {type, default}`);
  }
  if (!TYPES.includes(parsed.type)) {
    throw new TypeError(`task ${factory}: argument ${name} has type ${parsed.type}, not one of ${TYPES.join(', ')}`);
  }
  return parsed;
}

function fits(value, type) {
  switch (type) {
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number';
    case 'string':
      return typeof value === 'string';
    case 'boolean':
      return typeof value === 'boolean';
    case 'object':
      return value !== null && typeof value === 'object' && !Array.isArray(value);
    case 'array':
      return Array.isArray(value);
    default:
      return true;
  }
}

const A = { integer: 'an integer', number: 'a number', string: 'a string', boolean: 'true or false', object: 'an object', array: 'an array' };

/**
 * Makes `fn(app, args)` a task factory. Export the result: the export's
 * name is the factory's. Options:
 * - `description`: one line saying what a task does;
 * - `args`: each argument's type (`'integer'`, `'number'`, `'string'`,
 *   `'boolean'`, `'object'`, `'array'`, `'any'`; a trailing `?` makes it
 *   optional) or `{type, default}`. With `args`, unknown, missing and
 *   mistyped arguments are refused before the task runs (`invalid-args`);
 *   without it, `fn` gets the JSON args as they are.
 * - `name`: the factory's name, if not the export's.
 * `fn` may be async: the task ends when its promise settles.
 */
export function task(fn, options = {}) {
  if (typeof fn !== 'function') throw new TypeError('task() takes the task function first');
  fn[TASK] = { description: options.description ?? '', args: options.args, name: options.name };
  return fn;
}

class Factory {
  constructor(name, fn) {
    const declared = fn[TASK] ?? {};
    this.name = declared.name ?? name;
    this.fn = fn;
    this.description = declared.description ?? '';
    this.args =
      declared.args === undefined
        ? undefined
        : Object.entries(declared.args).map(([arg, spec]) => [arg, argSpec(this.name, arg, spec)]);
  }

  /** The argument object for `text` (JSON), or `InvalidArgs`. */
  decode(text) {
    let args;
    try {
      args = text ? JSON.parse(text) : null;
    } catch (error) {
      throw new InvalidArgs(`factory ${this.name}: arguments are not JSON: ${error.message}`);
    }
    if (this.args === undefined) return args ?? {};
    if (args === null) args = {};
    if (typeof args !== 'object' || Array.isArray(args)) {
      throw new InvalidArgs(`factory ${this.name}: arguments must be a JSON object, got ${JSON.stringify(args)}`);
    }
    const known = this.args.map(([name]) => name);
    const unknown = Object.keys(args).filter((k) => !known.includes(k)).sort();
    if (unknown.length) {
      throw new InvalidArgs(
        `factory ${this.name}: unknown argument \`${unknown[0]}\` (it takes: ${[...known].sort().join(', ') || 'none'})`,
      );
    }
    const decoded = {};
    for (const [name, spec] of this.args) {
      const value = args[name];
      if (value === undefined || (value === null && spec.optional)) {
        if (!spec.optional) throw new InvalidArgs(`factory ${this.name}: missing argument \`${name}\``);
        decoded[name] = spec.default === undefined ? null : spec.default;
      } else if (!fits(value, spec.type)) {
        throw new InvalidArgs(
          `factory ${this.name}: argument \`${name}\` must be ${A[spec.type]}, got ${JSON.stringify(value)}`,
        );
      } else {
        decoded[name] = value;
      }
    }
    return decoded;
  }
}

/** The WIT error a thrown value becomes. */
function toWit(error) {
  if (error instanceof Cancelled || cancelSeen) return { tag: 'cancelled' };
  if (error instanceof TaskhostError) return { tag: error.kind, val: error.message };
  if (error instanceof Permanent) {
    host.stopRetrying();
    return { tag: 'failed', val: error.message || 'Permanent' };
  }
  if (error instanceof Error) {
    const stack = error.stack ? `\n${error.stack.trimEnd()}` : '';
    return { tag: 'failed', val: `${error.name}: ${error.message}${stack}` };
  }
  return { tag: 'failed', val: `uncaught ${typeof error}: ${String(error)}` };
}

function resultText(result) {
  if (cancelSeen) throw { tag: 'cancelled' };
  const text = JSON.stringify(result === undefined ? null : result);
  if (text === undefined) throw { tag: 'failed', val: `the result is not JSON: ${String(result)}` };
  return text;
}

/**
 * Takes, once, the path every task's call takes through componentize-js's
 * export glue, while componentize-js snapshots the plugin (this module is
 * evaluated then), so that no task's fresh instance does it again.
 *
 * SpiderMonkey makes a realm's standard classes (String, the typed arrays,
 * DataView, Promise, the async function machinery) the first time a script
 * uses them. The export glue (an async function that decodes the
 * arguments from linear memory, awaits the factory and encodes the
 * result) runs in a global of its own, which nothing used before the
 * snapshot: every task made those classes again. A `perf` profile of
 * trivial JavaScript tasks put a third of the host's time in
 * `js::GlobalObject::resolveConstructor` before this; the same warm-up in
 * this module's own global moved nothing (its classes were made by the
 * plugin's own top level).
 *
 * The glue's global is reached through an imported host function (the
 * glue made it, so its `Function` is the glue's). Nothing here calls the
 * host: no task is running. If a componentize-js release lays its globals
 * out otherwise, the warm-up does less, never more.
 */
function warmUp() {
  try {
    const glue = host.name.constructor;
    if (glue !== Function) glue(GLUE_WARM_UP)();
  } catch {
    // Only a warm-up: a task still runs without it.
  }
}

/** The glue global's property that says the warm-up ran there (a test
 * reads it: a componentize-js release that moves the glue would drop it). */
const GLUE_WARMED = '__taskhostWarmedUp';

/** What the export glue does for a call, run in the glue's global. */
const GLUE_WARM_UP = `
  for (const name of Object.getOwnPropertyNames(globalThis)) {
    try {
      void globalThis[name];
    } catch {}
  }
  const s = 'warm-up';
  let codes = 0;
  for (let i = 0; i < s.length; i++) codes += s.charCodeAt(i);
  const memory = new ArrayBuffer(64);
  const text = new TextDecoder().decode(new Uint8Array(memory, 0, 8));
  new TextEncoder().encodeInto('warm-up', new Uint8Array(memory, 8, 16));
  const view = new DataView(memory);
  view.setInt8(0, 0, true);
  view.setUint32(4, text.length + codes, true);
  void (view.buffer === memory);
  const call = async (result) => {
    let ret;
    try {
      const value = await result;
      ret = value !== null && typeof value === 'object' ? value : { tag: 'ok', val: value };
    } catch (e) {
      ret = { tag: 'err', val: e };
    }
    switch (ret.tag) {
      case 'ok': return view.getUint32(4, true);
      default: return 0;
    }
  };
  call('x');
  call(Promise.resolve('y')).then(() => {}, () => {});
  globalThis[${JSON.stringify(GLUE_WARMED)}] = true;
`;

/**
 * The plugin's `factories` export for a module's exports: every export
 * made with `task()` (and every function of a default-exported object) is
 * a factory. `taskhost build` calls it; plugins do not need to.
 */
export function factoriesFrom(module) {
  warmUp();
  const found = new Map();
  const add = (name, fn) => {
    const factory = new Factory(name, fn);
    found.set(factory.name, factory);
  };
  for (const [name, value] of Object.entries(module)) {
    if (name !== 'default' && typeof value === 'function' && value[TASK]) add(name, value);
  }
  const fallback = module.default;
  if (fallback && typeof fallback === 'object') {
    for (const [name, value] of Object.entries(fallback)) {
      if (typeof value === 'function') add(name, value);
    }
  }
  const lookup = (name) => {
    const factory = found.get(name);
    if (!factory) {
      throw { tag: 'unknown-factory', val: `${name} (this plugin has: ${[...found.keys()].sort().join(', ') || 'none'})` };
    }
    return factory;
  };
  const decode = (factory, args) => {
    try {
      return factory.decode(args);
    } catch (error) {
      throw toWit(error);
    }
  };
  return {
    listFactories() {
      return [...found.values()].map((f) => ({ name: f.name, description: f.description }));
    },
    check(name, args) {
      decode(lookup(name), args);
    },
    run(name, args) {
      const factory = lookup(name);
      const decoded = decode(factory, args);
      let result;
      try {
        result = factory.fn(new App(), decoded);
      } catch (error) {
        throw toWit(error);
      }
      if (result && typeof result.then === 'function') {
        return result.then(resultText, (error) => {
          throw toWit(error);
        });
      }
      return resultText(result);
    },
  };
}
