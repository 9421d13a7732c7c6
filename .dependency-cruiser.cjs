// The layering of ARCHITECTURE.md, enforced on the compiled output (dist/) by `npm test`
// (test/layering.test.ts). Rooms are listed bottom to top; a module may import from its own
// room and from rooms of lower layers only. Rooms of one layer do not import each other.
// The TypeScript 7 compiler has no JS API, so the rules run on the emitted ES modules, which
// keep every import of the sources (type-only imports are erased and so cannot create a cycle).
const LAYERS = [
  ['util'],
  ['format'],
  ['tar', 'chunker', 'catalog', 'fuse', 'registry', 's3'],
  ['store'],
  ['ingest', 'export', 'cache'],
  ['mount', 'image', 'publisher', 'podman'],
  ['cli'],
  ['tools'], // entry points: docker2thin is the convert command under another name
];

const room = (name) => (name === 'tools' ? '^dist/tools/' : `^dist/src/${name}/`);
const layerOf = new Map();
LAYERS.forEach((rooms, i) => rooms.forEach((r) => layerOf.set(r, i)));

const forbidden = [
  {
    name: 'no-circular',
    severity: 'error',
    comment: 'Import cycles make the layering meaningless and start-up order fragile.',
    from: {},
    to: { circular: true },
  },
  {
    name: 'no-test-code-in-product',
    severity: 'error',
    comment: 'Shipped code never imports tests, fixtures or benchmarks.',
    from: { path: '^dist/(src|tools)/' },
    to: { path: '^dist/(test|bench)/' },
  },
];

const known = [...layerOf.keys()].filter((r) => r !== 'tools').join('|');
forbidden.push({
  name: 'known-rooms-only',
  severity: 'error',
  comment: 'every module of src/ lives in a room that ARCHITECTURE.md places in a layer',
  from: { path: '^dist/src/', pathNot: `^dist/src/(${known})/` },
  to: {},
});

for (const [from, fromLayer] of layerOf) {
  // Everything at this layer or above, except the room itself.
  const banned = [...layerOf].filter(([to, toLayer]) => to !== from && toLayer >= fromLayer).map(([to]) => room(to));
  if (banned.length === 0) continue;
  forbidden.push({
    name: `layer-${from}`,
    severity: 'error',
    comment: `${from} (layer ${fromLayer}) may import only its own room and lower layers`,
    from: { path: room(from) },
    to: { path: banned.map((p) => `(${p})`).join('|') },
  });
}

module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '\\.map$' },
    moduleSystems: ['es6', 'cjs'],
  },
};
