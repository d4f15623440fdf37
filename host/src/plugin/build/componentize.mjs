// Made by `taskhost build` (host/src/plugin/build/componentize.mjs): bundles
// a JavaScript plugin with the taskhost SDK (esbuild), then makes it a
// component (componentize-js). Runs from the tool directory taskhost
// installed both into.
//
//   node componentize.mjs ENTRY SDK WIT BUNDLE OUT
import { build } from 'esbuild';
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [entry, sdk, wit, bundle, out] = process.argv.slice(2);
await build({
  entryPoints: [entry],
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  mainFields: ['module', 'main'],
  target: 'es2022',
  // The host's interfaces are the component's imports, not modules.
  external: ['taskhost:*', 'wasi:*'],
  alias: { taskhost: sdk },
  outfile: bundle,
  logLevel: 'warning',
});
const { component } = await componentize({
  sourcePath: bundle,
  witPath: wit,
  worldName: 'plugin',
  // `fetch` stays (outbound HTTP through the host's wasi:http and its
  // allow-list); a plugin serves no incoming HTTP.
  disableFeatures: ['fetch-event'],
});
await writeFile(out, component);
