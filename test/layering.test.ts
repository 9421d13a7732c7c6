// The architecture's rules, checked by real tools on every `npm test`: dependency-cruiser runs the
// layer rules of .dependency-cruiser.cjs over the compiled modules, knip looks for dead exports
// and files. Each rule set is also run against a small tree that breaks it, so a rule that stopped
// matching (a renamed room, a wrong path pattern) fails here instead of passing silently.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { REPO_ROOT, run, tmpDir, cleanupTmpDirs } from './helpers/proc.js';

after(cleanupTmpDirs);

const DEPCRUISE = join(REPO_ROOT, 'node_modules', '.bin', 'depcruise');
const KNIP = join(REPO_ROOT, 'node_modules', '.bin', 'knip');
const CONFIG = join(REPO_ROOT, '.dependency-cruiser.cjs');

async function cruise(cwd: string, roots: string[]): Promise<{ code: number | null; out: string }> {
  const r = await run(DEPCRUISE, [...roots, '--config', CONFIG, '--output-type', 'err'], { cwd, timeoutMs: 120_000 });
  return { code: r.code, out: r.stdout + r.stderr };
}

test('imports follow the layers of ARCHITECTURE.md: none upward, no cycles, no test code in the product', async () => {
  const { code, out } = await cruise(REPO_ROOT, ['dist/src', 'dist/tools']);
  assert.equal(code, 0, `dependency rules broken:\n${out}`);
});

test('the layer rules catch an upward import, a cycle, a same-layer import and test code in the product', async () => {
  const dir = await tmpDir();
  const files: Record<string, string> = {
    'dist/src/util/log.js': "export const log = 1;\n",
    // store (layer 3) importing cache (layer 4): upward.
    'dist/src/store/store.js': "import { c } from '../cache/cache.js';\nexport const s = c;\n",
    'dist/src/cache/cache.js': "import { log } from '../util/log.js';\nexport const c = log;\n",
    // tar and catalog share a layer: neither may import the other.
    'dist/src/tar/reader.js': "import { k } from '../catalog/schema.js';\nexport const t = k;\n",
    'dist/src/catalog/schema.js': "export const k = 2;\n",
    // a cycle inside one room.
    'dist/src/ingest/a.js': "import { b } from './b.js';\nexport const a = () => b;\n",
    'dist/src/ingest/b.js': "import { a } from './a.js';\nexport const b = () => a;\n",
    // product code reaching into the tests.
    'dist/src/image/convert.js': "import { h } from '../../test/helpers/proc.js';\nexport const x = h;\n",
    'dist/test/helpers/proc.js': "export const h = 3;\n",
  };
  for (const [rel, text] of Object.entries(files)) {
    await mkdir(join(dir, rel, '..'), { recursive: true });
    await writeFile(join(dir, rel), text);
  }
  const { code, out } = await cruise(dir, ['dist/src']);
  assert.notEqual(code, 0, out);
  assert.match(out, /layer-store: dist\/src\/store\/store\.js → dist\/src\/cache\/cache\.js/);
  assert.match(out, /layer-tar: dist\/src\/tar\/reader\.js → dist\/src\/catalog\/schema\.js/);
  assert.match(out, /no-circular: dist\/src\/ingest\/a\.js → /);
  assert.match(out, /no-test-code-in-product: dist\/src\/image\/convert\.js → dist\/test\/helpers\/proc\.js/);
  assert.doesNotMatch(out, /layer-cache: dist\/src\/cache\/cache\.js → dist\/src\/util/, 'importing a lower layer is allowed');
});

test('no dead exports, unused files or unlisted dependencies (knip)', async () => {
  const r = await run(KNIP, ['--no-progress', '--no-config-hints'], { cwd: REPO_ROOT, timeoutMs: 180_000 });
  assert.equal(r.code, 0, `knip found dead code:\n${r.stdout}${r.stderr}`);
});
