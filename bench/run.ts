// `npm run bench [-- NAME...]`: runs the named benchmarks (default: all), each printing ratios vs its baseline.
const benches: Record<string, () => Promise<{ main(): Promise<void> }>> = {
  ingest: () => import('./ingest.js'),
  chunking: () => import('./chunking.js'),
  read: () => import('./read.js'),
  convert: () => import('./convert.js'),
  sitecache: () => import('./sitecache.js'),
  coldstart: () => import('./coldstart.js'),
  'coldstart-where': () => import('./coldstart-where.js'),
  'coldstart-floor': () => import('./floor.js'),
  catalog: () => import('./catalog.js'),
  podman: () => import('./podman.js'),
  'image-index': () => import('./image-index.js'),
};

const names = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const todo = names.length ? names : Object.keys(benches);
for (const n of todo) {
  const load = benches[n];
  if (!load) { console.error(`unknown bench ${n}; known: ${Object.keys(benches).join(', ')}`); process.exit(2); }
  console.log(`\n### ${n}`);
  await (await load()).main();
}
