import { task } from 'taskhost';

/** Greets after `delay_ms`, with the greeting from [config]. */
export const notify_started = task(
  (app, { delay_ms }) => {
    app.sleep(delay_ms); // throws Cancelled if the task is cancelled
    const greeting = app.config('greeting', 'hello');
    app.info(`${greeting} from ${app.name()} on worker ${app.worker()}`);
  },
  {
    description: 'Greets after `delay_ms`, with the greeting from [config].',
    args: { delay_ms: { type: 'integer', default: 1000 } },
  },
);

export const add = task(
  (app, { a, b }) => {
    app.debug('adding');
    return a + b;
  },
  { description: "Adds two numbers; the sum becomes the task's result.", args: { a: 'integer', b: 'integer' } },
);
