// taskhost's dashboard: a page of the control API, served by the host and
// embedded in its binary. Every call is a call of the control API (the one
// the CLI makes), authorized by the session cookie the sign-in set; every
// change carries the session's CSRF value. Text from the host is only ever
// set as text (textContent), never as markup.

const $ = (id) => document.getElementById(id);
let session = null;
let stream = null;

/** An element with `text` (as text) and attributes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

/** Calls the control API; throws ApiError with the host's message. */
async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET') {
    headers['X-Taskhost-CSRF'] = session ? session.csrf : '';
    headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = (json && json.error) || {};
    if (response.status === 401) showSignIn();
    throw new ApiError(response.status, error.kind || 'error', error.message || text || response.statusText);
  }
  return json;
}

function time(ms) {
  if (ms === null || ms === undefined) return '';
  return new Date(Number(ms)).toISOString().replace('T', ' ').replace('Z', '');
}

function elapsed(task) {
  if (!task.started_at_ms) return '';
  const end = task.ended_at_ms || Date.now();
  return `${((end - task.started_at_ms) / 1000).toFixed(1)} s`;
}

function stateCell(state) {
  return el('span', { class: `state state-${state}` }, state);
}

function readOnly() {
  return session && session.access === 'read_only';
}

/** A button for a change, disabled for a read-only session. */
function action(label, onclick, attrs = {}) {
  return el('button', { type: 'button', disabled: readOnly(), onclick, ...attrs }, label);
}

function page(...children) {
  const node = $('page');
  node.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function failure(error) {
  return el('p', { class: 'error', role: 'alert' }, error.message || String(error));
}

// --- Sign-in ---------------------------------------------------------------

function showSignIn() {
  session = null;
  if (stream) stream.close();
  stream = null;
  $('nav').hidden = true;
  $('page').hidden = true;
  $('sign-in-page').hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  $('sign-in-error').textContent = '';
  try {
    const answer = await api('POST', '/ui/login', { token: $('token').value });
    $('token').value = '';
    session = answer;
    await start();
  } catch (error) {
    $('sign-in-error').textContent = error.message;
  }
}

async function signOut() {
  await api('POST', '/ui/logout').catch(() => {});
  showSignIn();
}

async function start() {
  const current = await api('GET', '/ui/session');
  session = current.session;
  $('app-name').textContent = current.app;
  $('access').textContent = readOnly() ? 'read-only' : 'full access';
  $('sign-in-page').hidden = true;
  $('nav').hidden = false;
  $('page').hidden = false;
  listen();
  route();
}

// --- Live updates ------------------------------------------------------------

const listeners = new Set();

/** Follows the host's lifecycle stream; pages that show tasks refresh. */
function listen() {
  if (stream) return;
  stream = new EventSource('/v1/stream');
  stream.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    for (const listener of listeners) listener(event);
  };
}

/** Calls `refresh` at most every 300 ms while events come. */
function onEvents(refresh) {
  let due = null;
  const listener = () => {
    if (due) return;
    due = setTimeout(() => {
      due = null;
      refresh();
    }, 300);
  };
  listeners.add(listener);
  return () => {
    listeners.delete(listener);
    if (due) clearTimeout(due);
  };
}

// --- Pages -----------------------------------------------------------------

let leave = () => {};

async function route() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean);
  try {
    if (parts.length === 0) await overview();
    else if (parts[0] === 'tasks') await tasksPage(new URLSearchParams(parts.slice(1).join('/')));
    else if (parts[0] === 'task' && parts[1]) await taskPage(parts[1]);
    else if (parts[0] === 'schedules') await schedulesPage();
    else if (parts[0] === 'plugins') await pluginsPage();
    else if (parts[0] === 'hosts') await hostsPage();
    else page(el('h1', {}, 'Not found'));
  } catch (error) {
    if (error.status !== 401) page(el('h1', {}, 'Error'), failure(error));
  }
}

async function overview() {
  const render = async () => {
    // Counted by the host: the tasks themselves are not sent.
    const summary = await api('GET', '/v1/summary');
    const card = (id, n, label) => el('div', { class: 'card' }, el('div', { class: 'n', id }, n), el('div', { class: 'muted' }, label));
    page(
      el('h1', {}, 'Overview'),
      el('div', { class: 'cards' },
        card('running-count', summary.states.running, 'running'),
        card('queued-count', summary.states.queued, 'queued'),
        card('failed-hour', summary.failed_last_hour, 'failed in the last hour'),
        card('throughput', (summary.done_last_minute / 60).toFixed(2), 'done per second (last minute)')),
      dispatchForm(),
    );
  };
  await render();
  leave = onEvents(render);
}

function dispatchForm() {
  const name = el('input', { id: 'event-name', placeholder: 'event' });
  const payload = el('input', { id: 'event-payload', placeholder: 'payload' });
  const out = el('span', { class: 'muted', id: 'event-result' });
  const form = el('form', { class: 'filters' }, name, payload,
    el('button', { type: 'submit', disabled: readOnly() }, 'Dispatch'), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const woken = await api('POST', `/v1/events/${encodeURIComponent(name.value)}`, { payload: payload.value });
      out.textContent = `woke ${woken.woken} task(s)`;
    } catch (error) {
      out.textContent = error.message;
    }
  });
  return el('div', {}, el('h2', {}, 'Dispatch an event'), form);
}

const STATES = ['', 'queued', 'pending', 'running', 'done', 'failed', 'cancelled'];
const PAGE = 100;

async function tasksPage(params) {
  const filter = {
    state: params.get('state') || '',
    plugin: params.get('plugin') || '',
    factory: params.get('factory') || '',
    name: params.get('name') || '',
    queue: params.get('queue') || '',
  };
  // In a cluster: this host's tasks, one other host's, or every host's.
  const host = params.get('host') || '';
  let hosts = null;
  try {
    hosts = await api('GET', '/v1/hosts');
  } catch {
    hosts = null; // no cluster
  }
  let before = null;
  const stateSelect = el('select', { id: 'filter-state' }, ...STATES.map((s) => el('option', { value: s, selected: s === filter.state }, s || 'any state')));
  const inputs = ['plugin', 'factory', 'name', 'queue'].map((key) => el('input', { id: `filter-${key}`, placeholder: key, value: filter[key] }));
  const hostSelect = hosts && el('select', { id: 'filter-host' },
    el('option', { value: '', selected: host === '' }, 'this host'),
    el('option', { value: 'all', selected: host === 'all' }, 'every host'),
    ...hosts.map((h) => el('option', { value: h.host, selected: host === h.host }, h.host)));
  const form = el('form', { class: 'filters' }, stateSelect, ...inputs, hostSelect, el('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (stateSelect.value) next.set('state', stateSelect.value);
    for (const input of inputs) if (input.value) next.set(input.placeholder, input.value);
    if (hostSelect && hostSelect.value) next.set('host', hostSelect.value);
    location.hash = `#/tasks/${next.toString()}`;
  });
  const body = el('tbody', { id: 'task-rows' });
  const more = el('button', { type: 'button', id: 'older' }, 'Older');
  const columns = ['id', 'name', 'plugin / factory', 'worker', 'state', 'started', 'ran'];
  if (host) columns.push('host');
  const table = el('table', {}, el('thead', {}, el('tr', {}, ...columns.map((h) => el('th', {}, h)))), body);
  page(el('h1', {}, 'Tasks'), form, table, more);

  const query = () => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const [k, v] of Object.entries(filter)) if (v) q.set(k, v);
    if (host && host !== 'all') q.set('host', host);
    if (before !== null) q.set('before', String(before));
    return q.toString();
  };
  // Another host's task opens on that host's own dashboard: its log and
  // actions are there.
  const row = (t) => el('tr', { class: 'row', 'data-task': t.id, onclick: t.host ? null : () => { location.hash = `#/task/${t.id}`; } },
    el('td', {}, t.id), el('td', {}, t.name || ''), el('td', {}, `${t.plugin} / ${t.factory}`),
    el('td', {}, t.worker), el('td', {}, stateCell(t.state)), el('td', {}, time(t.started_at_ms)), el('td', {}, elapsed(t)),
    host ? el('td', { class: 'task-host' }, t.host || '') : null);
  const load = async (append) => {
    const path = host ? '/v1/cluster/tasks' : '/v1/tasks';
    const tasks = await api('GET', `${path}?${query()}`);
    if (!append) body.replaceChildren();
    body.append(...tasks.map(row));
    // Ids are each host's own: every host's newest, unpaged.
    more.hidden = tasks.length < PAGE || host === 'all';
    if (tasks.length) before = tasks[tasks.length - 1].id;
  };
  more.addEventListener('click', () => load(true));
  await load(false);
  // Live: the first page is read again as tasks start and end.
  leave = onEvents(() => {
    if (body.children.length > PAGE) return; // paged back: leave it still
    before = null;
    load(false).catch(() => {});
  });
}

async function taskPage(id) {
  const task = await api('GET', `/v1/tasks/${encodeURIComponent(id)}`);
  const logs = el('div', { id: 'task-logs' });
  const fields = [
    ['id', task.id], ['name', task.name || ''], ['plugin', `${task.plugin} (${task.plugin_version})`],
    ['factory', task.factory], ['worker', task.worker], ['host', task.host || ''], ['queue', task.queue || ''],
    ['attempt', task.attempt], ['restarts', task.restarts], ['durable', task.durable],
    ['parent', task.parent || ''], ['created', time(task.created_at_ms)], ['started', time(task.started_at_ms)],
    ['ended', time(task.ended_at_ms)], ['ran', elapsed(task)],
  ];
  const dl = el('dl', {}, el('dt', {}, 'state'), el('dd', {}, el('span', { id: 'task-state', class: `state state-${task.state}` }, task.state, task.cancel_stage ? ` (${task.cancel_stage})` : '')),
    ...fields.filter(([, v]) => v !== '').flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  const ended = ['done', 'failed', 'cancelled'].includes(task.state);
  const actions = el('div', { class: 'filters' });
  const message = el('span', { class: 'muted', id: 'action-result' });
  if (!ended) {
    actions.append(action('Cancel', async () => {
      message.textContent = 'cancelling…';
      try {
        await api('POST', `/v1/tasks/${task.id}/cancel`);
        await route();
      } catch (error) {
        message.textContent = error.message;
      }
    }, { id: 'cancel', class: 'danger' }));
  }
  if (ended) {
    // Its own arguments, unless the record kept only their beginning.
    const kept = task.args && !task.args_truncated ? task.args : '{}';
    const args = el('input', { id: 'start-args', value: kept, size: 40, 'aria-label': 'arguments (JSON)' });
    actions.append(args);
    actions.append(action('Start again', async () => {
      try {
        const submitted = await api('POST', '/v1/tasks', {
          plugin: task.plugin,
          factory: task.factory,
          worker: task.worker,
          name: task.name || undefined,
          args: JSON.parse(args.value || '{}'),
        });
        location.hash = `#/task/${submitted.tasks[0].id}`;
      } catch (error) {
        message.textContent = error.message;
      }
    }, { id: 'start-again' }));
  }
  actions.append(message);
  const children = await api('GET', `/v1/tasks?parent=${task.id}&limit=100`);
  const childList = children.length
    ? el('div', {}, el('h2', {}, 'Tasks it started'),
      el('table', { id: 'task-children' }, el('tbody', {}, ...children.map((c) => el('tr', { class: 'row', 'data-task': c.id, onclick: () => { location.hash = `#/task/${c.id}`; } },
        el('td', {}, c.id), el('td', {}, c.name || ''), el('td', {}, `${c.plugin} / ${c.factory}`), el('td', {}, stateCell(c.state)))))))
    : null;
  page(
    el('h1', {}, `Task ${task.name || task.id}`),
    actions,
    dl,
    el('h2', {}, 'Arguments'),
    el('pre', { id: 'task-args' }, task.args || '', task.args_truncated ? ' … (the first 4 KiB)' : ''),
    childList,
    task.result !== null && task.result !== undefined ? el('div', {}, el('h2', {}, 'Result'), el('pre', { id: 'task-result' }, task.result)) : null,
    task.error ? el('div', {}, el('h2', {}, 'Error'), el('pre', { id: 'task-error' }, task.error)) : null,
    el('h2', {}, 'Log'),
    logs,
  );
  // The log, followed while the task runs.
  let after = 0;
  let gone = false;
  leave = () => { gone = true; };
  const follow = async () => {
    while (!gone) {
      const wait = ended ? '' : '&wait_ms=10000';
      let answer;
      try {
        answer = await api('GET', `/v1/tasks/${task.id}/logs?after=${after}${wait}`);
      } catch {
        return;
      }
      if (gone) return;
      if (after === 0 && answer.dropped > 0) logs.append(el('div', { class: 'muted' }, `(${answer.dropped} older line(s) no longer kept)`));
      for (const line of answer.lines) {
        logs.append(el('div', { class: 'log-line' }, `${time(line.at_ms)} ${line.level.toUpperCase()} ${line.message}`));
        after = line.seq;
      }
      if (answer.ended || ended) {
        if (!ended && !gone) await route();
        return;
      }
    }
  };
  follow();
}

async function schedulesPage() {
  const render = async () => {
    const schedules = await api('GET', '/v1/schedules');
    const steer = (name, verb) => action(verb, async () => {
      try {
        await api('POST', `/v1/schedules/${encodeURIComponent(name)}/${verb}`);
        await render();
      } catch (error) {
        page(el('h1', {}, 'Schedules'), failure(error));
      }
    }, { 'data-schedule': name, 'data-action': verb });
    page(
      el('h1', {}, 'Schedules'),
      el('table', {},
        el('thead', {}, el('tr', {}, ...['name', 'task', 'when', 'next', 'last', 'state', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, ...schedules.map((s) => el('tr', { 'data-schedule': s.name },
          el('td', {}, s.name), el('td', {}, `${s.plugin} / ${s.factory}`), el('td', {}, s.when),
          el('td', {}, time(s.next_at_ms)), el('td', {}, s.last_state ? stateCell(s.last_state) : ''),
          el('td', { class: 'schedule-state' }, s.paused ? 'paused' : 'active'),
          el('td', {}, s.paused ? steer(s.name, 'resume') : steer(s.name, 'pause'), ' ', steer(s.name, 'trigger')))))),
    );
  };
  await render();
}

async function pluginsPage() {
  const plugins = await api('GET', '/v1/plugins');
  const loads = await api('GET', '/v1/loads');
  const outcome = (l) => (l.event === 'plugin_loaded'
    ? (l.replaces ? `loaded, replacing ${l.replaces}` : 'loaded')
    : `refused: ${l.error}`);
  page(
    el('h1', {}, 'Plugins'),
    el('table', {},
      el('thead', {}, el('tr', {}, ...['name', 'build', 'state', 'live tasks', 'WIT', 'factories'].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...plugins.map((p) => el('tr', {},
        el('td', {}, p.name), el('td', {}, p.version), el('td', {}, p.state), el('td', {}, p.live_tasks),
        el('td', {}, p.wit), el('td', {}, (p.factories || []).map((f) => f.name).join(', ')))))),
    el('h2', {}, 'Hot-load history'),
    el('table', { id: 'loads' },
      el('thead', {}, el('tr', {}, ...['when', 'plugin', 'build', 'file', 'outcome'].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...loads.map((l) => el('tr', { class: l.event === 'plugin_refused' ? 'refused' : '' },
        el('td', {}, time(l.at_ms)), el('td', {}, l.plugin), el('td', {}, l.version || ''),
        el('td', {}, l.path), el('td', { class: 'load-outcome' }, outcome(l)))))),
  );
}

async function hostsPage() {
  try {
    const hosts = await api('GET', '/v1/hosts');
    page(
      el('h1', {}, 'Hosts'),
      el('table', {},
        el('thead', {}, el('tr', {}, ...['host', 'version', 'workers', 'live tasks', 'serving'].map((h) => el('th', {}, h)))),
        el('tbody', {}, ...hosts.map((h) => el('tr', {},
          el('td', {}, h.host || h.name || ''), el('td', {}, h.version || ''), el('td', {}, h.workers ?? ''),
          el('td', {}, h.live_tasks ?? ''), el('td', {}, String(h.serving ?? '')))))),
    );
  } catch (error) {
    if (error.kind === 'no_cluster') page(el('h1', {}, 'Hosts'), el('p', { class: 'muted' }, 'This host runs alone (no [cluster] in its app.toml).'));
    else throw error;
  }
}

// --- Start ---------------------------------------------------------------------

window.addEventListener('hashchange', route);
$('sign-in-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', signOut);
start().catch(() => showSignIn());
