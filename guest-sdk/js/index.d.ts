// Types for taskhost's JavaScript guest SDK (see index.js).

export type ArgType = 'integer' | 'number' | 'string' | 'boolean' | 'object' | 'array' | 'any';
export type ArgSpec = ArgType | `${ArgType}?` | { type?: ArgType; default?: unknown; optional?: boolean };

export interface TaskOptions {
  /** One line saying what a task of this factory does. */
  description?: string;
  /** Each argument's type: with it, bad arguments are refused before the task runs. */
  args?: Record<string, ArgSpec>;
  /** The factory's name, if not its export's. */
  name?: string;
}

export type TaskState = 'queued' | 'pending' | 'running' | 'done' | 'failed' | 'cancelled';

export interface TaskInfo {
  id: number | bigint;
  name: string | null;
  plugin: string;
  pluginVersion: string;
  factory: string;
  worker: number | null;
  state: TaskState;
  createdAtMs: number;
  startedAtMs: number | null;
  endedAtMs: number | null;
  /** A done task's result, as JSON text. */
  result: string | null;
  error: string | null;
  cancelStage: 'cooperative' | 'forced' | null;
  ended: boolean;
  /** A done task's result, decoded; throws `Failed` otherwise. */
  value(): unknown;
}

/** A task to join: its id, or its name on this worker. */
export type TaskRef = number | bigint | string;

export interface Retry {
  attempts: number;
  initialMs?: number;
  maxMs?: number;
  exponential?: boolean;
  jitter?: boolean;
}

export interface AddTaskOptions {
  name?: string;
  plugin?: string;
  retry?: Retry;
  durable?: boolean;
  idempotencyKey?: string;
  /** Wait in this queue (`[[queues]]`) until it lets the task start. */
  queue?: string;
  /** Its key in the queue. */
  key?: string;
  /** From -100 to 100, higher first. */
  priority?: number;
  /** Start no sooner than this many ms from now. */
  delayMs?: number;
  /** Start no sooner than this Unix time, in ms. */
  runAtMs?: number;
  /** Cancelled with this task (and when this attempt ends); not with `durable`. */
  child?: boolean;
  /** Supervised: started again each time a run ends; not with `durable`. */
  restart?: 'always' | 'on-failure' | Restart;
}

export interface Restart {
  when: 'always' | 'on-failure';
  /** At most this many restarts within `periodMs` (default 5). */
  intensity?: number;
  periodMs?: number;
  /** The first wait (default 1000), doubling up to `maxMs` (default 60000). */
  initialMs?: number;
  maxMs?: number;
}

export class Cancelled extends Error {}
export class TaskhostError extends Error {
  kind: string;
}
export class UnknownFactory extends TaskhostError {}
export class InvalidArgs extends TaskhostError {}
export class Failed extends TaskhostError {}
export class NotFound extends TaskhostError {}
export class DuplicateName extends TaskhostError {}
export class UnknownPlugin extends TaskhostError {}
export class LimitExceeded extends TaskhostError {}
export class Permanent extends Error {}
/** A Postgres or Redis call failed; `code` names the case. */
export class DatabaseError extends Failed {
  code: 'denied' | 'bad-url' | 'connection-failed' | 'query-failed' | 'conversion-failed';
}

/** A Postgres value: `int8` and `numeric` beyond 2^53 come as bigint and
 * text; `bytea` as bytes; dates, times, json, uuid and numeric as text. */
export type PgValue = null | boolean | number | bigint | string | Uint8Array;

/** A Postgres connection the host holds. */
export class Postgres {
  /** Rows as objects keyed by column name. */
  query(statement: string, params?: unknown[]): Record<string, PgValue>[];
  /** How many rows the statement changed. */
  execute(statement: string, params?: unknown[]): number;
  close(): void;
}

export type RedisReply = null | number | bigint | string | boolean | Uint8Array | RedisReply[];

/** A Redis connection the host holds. */
export class Redis {
  command(name: string, ...args: (string | number | bigint | boolean | Uint8Array)[]): RedisReply;
  get(key: string): string | null;
  set(key: string, value: string | number | Uint8Array): string;
  incr(key: string, by?: number): number;
  del(...keys: string[]): number;
  close(): void;
}

export class Bucket {
  get<T = unknown>(key: string, fallback?: T): T;
  set(key: string, value: unknown): void;
  delete(key: string): void;
  exists(key: string): boolean;
  keys(): string[];
  increment(key: string, delta?: number): number;
}

export class App {
  name(): string;
  worker(): number | null;
  id(): number | bigint;
  attempt(): number;
  idempotencyKey(): string | null;
  stopRetrying(): void;
  config<T = unknown>(key: string, fallback?: T): T;
  /** The plugin's variable `key` (`[plugins.NAME.variables]`, wasi:config/store). */
  variable(key: string, fallback?: string | null): string | null;
  /** All of the plugin's variables, by name. */
  variables(): Record<string, string>;
  log(level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  sleep(ms: number | bigint): void;
  addTask(factory: string, args?: unknown, options?: AddTaskOptions): number | bigint;
  getTask(name: string): TaskInfo;
  /** Waits until the task has ended; null when `timeoutMs` passes first. */
  join(task: TaskRef, options?: { timeoutMs?: number }): TaskInfo | null;
  /** Every task's final info, in order, once all have ended; null on timeout. */
  joinAll(tasks: Iterable<TaskRef>, options?: { timeoutMs?: number }): TaskInfo[] | null;
  /** The first task to end, `[index, info]`; null on timeout. */
  joinAny(tasks: Iterable<TaskRef>, options?: { timeoutMs?: number }): [number, TaskInfo] | null;
  cancelTask(name: string): TaskInfo;
  tasks(): TaskInfo[];
  purgeTasks(): number;
  dispatch(event: string, payload?: string): number;
  waitEvent(event: string, options?: { timeoutMs?: number }): string | null;
  addSchedule(spec: Record<string, unknown>): void;
  removeSchedule(name: string): boolean;
  kv(bucket: string): Bucket;
  /** Connects to Postgres; the address must be in the plugin's tcp grant. */
  postgres(url: string): Postgres;
  /** Connects to Redis; the address must be in the plugin's tcp grant. */
  redis(url: string): Redis;
  /** The websocket connection of a route's `request` (or by its id). */
  connection(request: Request | number): Connection;
}

/** What a `[[routes]]` route passes to its task as `request`. */
export interface Request {
  /** The connection's id (websocket routes). */
  connection?: number;
  path: string;
  query: Record<string, string>;
  /** The headers the route lets through, lower case. */
  headers: Record<string, string>;
  remote: string;
  /** HTTP routes: the method and the body (parsed JSON for a JSON content type, else text). */
  method?: string;
  body?: unknown;
}

/** A websocket connection of the host's listener. */
export class Connection implements Iterable<string | Uint8Array> {
  constructor(id: number);
  readonly id: number;
  /** The client's next message; null once the connection is over. */
  recv(): string | Uint8Array | null;
  send(message: string | Uint8Array): void;
  /** Closes with `code` (1000, or 3000-4999) after what was queued. */
  close(code?: number, reason?: string): void;
  [Symbol.iterator](): Iterator<string | Uint8Array>;
}

export function task<A = any, R = unknown>(
  fn: (app: App, args: A) => R | Promise<R>,
  options?: TaskOptions,
): (app: App, args: A) => R | Promise<R>;

export function factoriesFrom(module: Record<string, unknown>): unknown;
