// The error hierarchy's contract: one module holds every error class, each with a stable unique code and
// an exit code from EXIT; the README's exit-code table is EXIT; the CLI maps errors to exit codes (130 on
// SIGINT, publishing nothing; 1 for an unexpected error, its stack only under THINFS_DEBUG).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import * as errors from '../src/util/errors.js';
import { EXIT, ThinfsError } from '../src/util/errors.js';
import { REPO_ROOT, THINFS_MAIN, thinfs, thinfsOk, tmpDir, cleanupTmpDirs, storeSnapshot, listFiles, waitFor } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';

after(cleanupTmpDirs);

type ErrorClass = (new (...args: any[]) => ThinfsError) & { code: string; exitCode: number };

/** Constructor arguments for each class: a class added without an entry here fails the test below. */
const SAMPLE_ARGS: Record<string, unknown[]> = {
  ThinfsError: ['m'], BadInputError: ['m'], UsageError: ['m'], InterruptedError: [], NotFoundError: ['m'],
  IntegrityError: ['obj', 'm'], TrustError: ['expired', 'm'], TransientError: ['m', 5], AttemptTimeoutError: ['m'],
  ProxyError: ['m'], RetryDeadlineError: ['m', new Error('last')], AuthError: ['m'], RegistryError: ['m', 500],
  S3Error: [500, 'InternalError', 'm', 'b/k'], ErrnoError: [5], TxnFailure: ['fetch', false, 'm'],
  QueueStateError: ['m'], WebhookError: ['m'], HttpError: [404, 'm'], LockLostError: ['fetch-x', 'stalled'],
};

const errorClasses = (): Array<[string, ErrorClass]> => Object.entries(errors)
  .filter(([, v]) => typeof v === 'function' && (v === ThinfsError || (v as Function).prototype instanceof ThinfsError)) as Array<[string, ErrorClass]>;

test('every error class is a ThinfsError with its own stable code, its name and an exit code from EXIT', () => {
  const exits = new Set<number>(Object.values(EXIT));
  const classes = errorClasses();
  assert.ok(classes.length >= 19, `found ${classes.length} error classes`);
  // Anything exported that extends Error must be in the hierarchy.
  for (const [name, v] of Object.entries(errors)) {
    if (typeof v === 'function' && (v as Function).prototype instanceof Error) assert.ok((v as Function).prototype instanceof ThinfsError || v === ThinfsError, `${name} is a ThinfsError`);
  }
  const byCode = new Map<string, string>();
  for (const [name, Cls] of classes) {
    assert.ok(Object.hasOwn(Cls, 'code'), `${name} declares its own static code`);
    assert.match(Cls.code, /^E[A-Z0-9]+$/, `${name}.code`);
    assert.ok(!byCode.has(Cls.code), `${name} and ${byCode.get(Cls.code)} share code ${Cls.code}`);
    byCode.set(Cls.code, name);
    assert.ok(exits.has(Cls.exitCode), `${name}.exitCode ${Cls.exitCode} is one of EXIT`);
    const args = SAMPLE_ARGS[name];
    assert.ok(args, `test lists sample constructor arguments for ${name}`);
    const e = new Cls(...args);
    assert.ok(e instanceof ThinfsError && e instanceof Error);
    assert.equal(e.name, name);
    assert.equal(e.code, Cls.code, `${name} instance carries the class code`);
    assert.ok(exits.has(e.exitCode), `${name} instance exit code ${e.exitCode}`);
    assert.match(e.stack ?? '', /\n\s+at /, `${name} keeps a stack`);
  }
  // Exit codes that depend on the answer stay within EXIT too.
  assert.equal(new errors.S3Error(403, 'AccessDenied', 'm', 'b/k').exitCode, EXIT.AUTH);
  assert.equal(new errors.S3Error(404, 'NoSuchKey', 'm', 'b/k').exitCode, EXIT.NOT_FOUND);
  // A deadline error must not look like a retryable network failure (ETIMEDOUT), nor a NotFoundError like an fs ENOENT.
  assert.notEqual(errors.RetryDeadlineError.code, 'ETIMEDOUT');
  assert.notEqual(errors.NotFoundError.code, 'ENOENT');
});

test("the README's exit-code table lists exactly EXIT's values, and every error code", async () => {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Commands\n'));
  assert.ok(section, 'README has a "Commands" section');
  const table = /^\| exit \| meaning \|\n\|[-|]+\|\n((?:\|.*\|\n)+)/m.exec(section);
  assert.ok(table, 'the Commands section has the exit-code table');
  const listed = table[1]!.trim().split('\n').map((row) => Number(/^\| *(\d+) *\|/.exec(row)?.[1]));
  assert.deepEqual([...listed].sort((a, b) => a - b), [...new Set(Object.values(EXIT))].sort((a, b) => a - b));
  for (const [name, Cls] of errorClasses()) assert.ok(section.includes(`\`${Cls.code}\``), `README's Commands section names ${name}'s code ${Cls.code}`);
});

test('no module but util/errors declares an error class (read from the compiled files)', async () => {
  const distSrc = join(REPO_ROOT, 'dist', 'src');
  const names = new Set(['Error', ...errorClasses().map(([n]) => n)]);
  const offenders: string[] = [];
  let files = 0;
  for (const rel of await listFiles(distSrc)) {
    if (!rel.endsWith('.js') || rel === 'util/errors.js') continue;
    files++;
    const js = await readFile(join(distSrc, rel), 'utf8');
    for (const m of js.matchAll(/\bclass\s+([\w$]+)?\s*extends\s+([\w$.]+)/g)) {
      const base = m[2]!.split('.').pop()!;
      if (names.has(base) || /Error$/.test(base)) offenders.push(`${relative(REPO_ROOT, join(distSrc, rel))}: class ${m[1] ?? '(anonymous)'} extends ${m[2]}`);
    }
  }
  assert.ok(files > 50, `read ${files} compiled modules`);
  assert.deepEqual(offenders, [], 'error classes belong in src/util/errors.ts');
});

test('src/ throws only ThinfsErrors; a plain Error is kept for internal invariants and says so in a comment', async () => {
  const src = join(REPO_ROOT, 'src');
  const bare: string[] = [];
  let kept = 0;
  for (const rel of await listFiles(src)) {
    if (!rel.endsWith('.ts') || rel === 'util/errors.ts') continue;
    const lines = (await readFile(join(src, rel), 'utf8')).split('\n');
    lines.forEach((line, i) => {
      if (!/\bthrow\b.*\bnew Error\(/.test(line)) return;
      // The line before (or the same line) says why this one is not a user-facing error.
      if (/\/\/|\/\*/.test(line.slice(0, line.indexOf('throw'))) || /^\s*(\/\/|\*)/.test(lines[i - 1] ?? '')) kept++;
      else bare.push(`src/${rel}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.deepEqual(bare, [], 'a user can meet these: throw a ThinfsError subclass (src/util/errors.ts), or comment why not');
  assert.ok(kept <= 4, `${kept} plain Errors kept as internal invariants`);
});

test('CLI: an unexpected error exits 1 with its message, the stack only under THINFS_DEBUG; a ThinfsError exits with its own code', async () => {
  const dir = await tmpDir();
  const file = join(dir, 'a-file');
  await writeFile(file, 'x');
  // mkdir under a regular file: ENOTDIR from the fs, not a ThinfsError.
  const plain = await thinfs(['init', join(file, 'store')]);
  assert.equal(plain.code, EXIT.FAILURE, plain.stderr);
  assert.match(plain.stderr, /^thinfs: error: ENOTDIR/);
  assert.doesNotMatch(plain.stderr, /\n\s+at /, 'no stack without THINFS_DEBUG');
  const debug = await thinfs(['init', join(file, 'store')], { env: { THINFS_DEBUG: '1' } });
  assert.equal(debug.code, EXIT.FAILURE);
  assert.match(debug.stderr, /^thinfs: error: ENOTDIR/);
  assert.match(debug.stderr, /\n\s+at .*WritableStore\.init/, 'THINFS_DEBUG prints the stack');
  const missing = await thinfs(['layers', '-s', join(dir, 'no-store')]);
  assert.equal(missing.code, EXIT.NOT_FOUND, missing.stderr);
  assert.doesNotMatch(missing.stderr, /\n\s+at /);
});

test('CLI: SIGINT during `thinfs ingest` of a slow stdin exits 130 and publishes nothing', async () => {
  const dir = await tmpDir();
  const store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const layer = await makeLayer(dir, 'big', async (root) => {
    await writeFile(join(root, 'data.bin'), pseudoRandom(8 << 20, 'sigint'));
    await writeFile(join(root, 'small.txt'), 'hello\n');
  });
  const tar = await readFile(layer.file);
  const before = await storeSnapshot(store);
  const child = spawn(process.execPath, [THINFS_MAIN, 'ingest', '-s', store, '-', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr.on('data', (b) => { stderr += b; });
  child.stdout.on('data', (b) => { stdout += b; });
  child.stdin.on('error', () => {});
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.once('exit', (code, signal) => res({ code, signal })));
  try {
    // Half the tar, then the writer stalls (stdin stays open): the ingest is mid-layer, its transaction open.
    child.stdin.write(tar.subarray(0, tar.length >> 1));
    await waitFor(async () => (await readdir(join(store, 'txn'))).length > 0 || null, 20_000, 50, 'an open ingest transaction');
    child.kill('SIGINT');
    const r = await Promise.race([exited, new Promise<null>((res) => setTimeout(() => res(null), 20_000))]);
    assert.ok(r, 'the ingest ended after SIGINT');
    assert.deepEqual(r, { code: EXIT.INTERRUPTED, signal: null }, stderr);
    assert.match(stderr, /thinfs: error: interrupted/);
    assert.equal(stdout, '', 'nothing reported as published');
    assert.deepEqual(await storeSnapshot(store), before, 'no layer, no object published');
    assert.deepEqual(await readdir(join(store, 'txn')), [], 'the transaction was rolled back');
    assert.deepEqual((await thinfsOk(['layers', '-s', store])).trim(), '');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  }
});
