// podman runs thin images natively (issue 13): a multi-layer image (deleted files, a replaced file, an
// opaque directory, an xattr) pushed to a real docker-registry, converted by docker2thin, mounted by
// thinfs; `thinfs podman-store --watch` keeps a podman image store over the mount and `thinfs podman-conf`
// writes the node's storage.conf. Oracle: the same image pulled from the registry by a second podman.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, THINFS_MAIN, run, runOk, thinfsOk, tmpDir, cleanupTmpDirs, haveCommand, storeSnapshot, waitFor } from './helpers/proc.js';
import { copyHostTools } from './helpers/host-tools.js';
import { testPodman, type TestPodman } from './helpers/podman.js';
import { OciLayout, startRegistry, pushLayout, populateBase, populateDelete, populateReplace, type Layer, type RegistryServer } from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { Store } from '../src/store/store.js';

let work = '';
let skip: string | false = false;
let reg: RegistryServer | null = null;
let mnt: Mounted | null = null;
let watcher: ChildProcess | null = null;
let thin: TestPodman | null = null;
let plain: TestPodman | null = null;
let store = '';
let layers: Layer[] = [];
let ref = '';

// What the oracle compares: the replaced file, the deleted ones, the opaque directory, an xattr, id, env, pwd.
const SCRIPT = [
  'cat /usr/lib/pyjson/__init__.py', 'ls /opt/app /var/lib/data /usr/lib/pyjson', 'ls /opt/app/remove-me.txt 2>&1 || true',
  'getfattr -n user.thinfs.note --only-values /etc/os-release; echo', 'id', 'env | grep -v ^HOSTNAME= | sort', 'pwd', 'echo "args:$0:$*"',
].join('; ');

async function convert(tag: string): Promise<void> {
  const r = await run(process.execPath, [path.join(REPO_ROOT, 'dist/tools/docker2thin.js'), '--insecure', '--store', store, `${reg!.host}/e2e/thin:${tag}`],
    { env: { THINFS_NO_PROGRESS: '1' }, timeoutMs: 180_000 });
  assert.equal(r.code, 0, r.stderr);
}

before(async () => {
  for (const c of ['podman', 'runc', 'docker-registry', 'skopeo', 'getfattr', 'setfattr']) if (!(await haveCommand(c))) { skip = `${c} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-podman-store-');
  const base = await makeLayer(work, 'base', async (d) => {
    await populateBase(d);
    await copyHostTools(d, ['sh', 'cat', 'ls', 'id', 'env', 'sort', 'grep', 'getfattr', 'sleep']);
    for (const x of ['tmp', 'proc', 'sys', 'dev']) await fsp.mkdir(path.join(d, x), { recursive: true });
    await fsp.chmod(path.join(d, 'tmp'), 0o1777);
    await runOk('setfattr', ['-n', 'user.thinfs.note', '-v', 'kept-by-thinfs', path.join(d, 'etc/os-release')]);
  }, { compression: 'gzip' });
  layers = [base, await makeLayer(work, 'delete', populateDelete, { compression: 'gzip' }), await makeLayer(work, 'replace', populateReplace, { compression: 'zstd' })];
  const lay = await new OciLayout(path.join(work, 'layout')).init();
  const cfg = { Entrypoint: ['/usr/bin/sh', '-c'], Cmd: [SCRIPT], Env: ['PATH=/usr/bin', 'THINFS_TEST=1', 'GREETING=hello thin'] };
  await lay.tag(await lay.image(layers, { os: 'linux', architecture: 'amd64' }, { configExtra: cfg }), 'v1');
  // v2: one more layer on the same three, published while the node runs
  const extra = await makeLayer(work, 'extra', async (d) => { await fsp.mkdir(path.join(d, 'opt/app'), { recursive: true }); await fsp.writeFile(path.join(d, 'opt/app/v2.txt'), 'version 2\n'); }, { compression: 'gzip' });
  await lay.tag(await lay.image([...layers, extra], { os: 'linux', architecture: 'amd64' }, { configExtra: { ...cfg, Cmd: ['cat /opt/app/v2.txt'] } }), 'v2');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(path.join(work, 'layout'), 'v1', reg, 'e2e/thin');
  await pushLayout(path.join(work, 'layout'), 'v2', reg, 'e2e/thin');
  ref = `${reg.host}/e2e/thin:v1`;

  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  await convert('v1');
  mnt = await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache') });
  // The node: the image store kept current by the watcher, storage.conf written by the command.
  const imageStore = path.join(work, 'podman-store');
  const ready = path.join(work, 'podman-store.ready');
  watcher = spawn(process.execPath, [THINFS_MAIN, 'podman-store', store, mnt.mp, imageStore, '--watch', '--interval', '0.5', '--ready-file', ready], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitFor(() => fsp.access(ready).then(() => true, () => false), 20_000, 50, 'podman-store ready');
  const conf = path.join(work, 'node', 'storage.conf');
  await fsp.mkdir(path.dirname(conf), { recursive: true });
  await thinfsOk(['podman-conf', imageStore, '--graphroot', path.join(work, 'node/graph'), '--runroot', path.join(work, 'node/run'), '-o', conf]);
  thin = await testPodman(path.join(work, 'node'), { storageConf: conf });
  plain = await testPodman(path.join(work, 'plain'));
});

after(async () => {
  await thin?.cleanup();
  await plain?.cleanup();
  watcher?.kill('SIGTERM');
  if (mnt) { await mnt.stop(); await forceUnmount(mnt.mp); }
  await reg?.stop();
  await cleanupTmpDirs();
});

test('podman run REF from the thin image store: same output as the image pulled normally, no layer blob fetched', async (t) => {
  if (skip) { t.skip(skip); return; }
  const layerDigests = new Set(layers.map((l) => l.digest));
  const before = (await reg!.gets('e2e/thin')).filter((d) => layerDigests.has(d)).length;
  const images = await thin!.podmanOk(['images', '--format', '{{.Repository}}:{{.Tag}} {{.ReadOnly}}']);
  assert.match(images, new RegExp(`^${ref.replace(/[.]/g, '\\.')} true$`, 'm'), 'podman lists the thin image, read-only');
  const thinRun = await thin!.podman(['run', '--rm', '--network=none', ref]);
  assert.equal(thinRun.code, 0, thinRun.stderr);
  const thinArgs = await thin!.podmanOk(['run', '--rm', '--network=none', ref, 'echo "override:$0:$(id -u)"', 'a1', 'a2']);
  const after = (await reg!.gets('e2e/thin')).filter((d) => layerDigests.has(d)).length;
  assert.equal(after, before, 'podman fetched no layer blob from the registry');

  await plain!.podmanOk(['pull', '--quiet', '--tls-verify=false', ref]);
  const plainRun = await plain!.podmanOk(['run', '--rm', '--network=none', ref]);
  const plainArgs = await plain!.podmanOk(['run', '--rm', '--network=none', ref, 'echo "override:$0:$(id -u)"', 'a1', 'a2']);
  assert.equal(thinRun.stdout, plainRun, 'same output as the normally pulled image');
  assert.equal(thinArgs, plainArgs);
  // The registry's manifest, byte for byte: the same digest as a pull, and digest references resolve.
  const fmt = ['image', 'inspect', '--format', '{{.Digest}}', ref];
  const digest = (await plain!.podmanOk(fmt)).trim();
  assert.equal((await thin!.podmanOk(fmt)).trim(), digest);
  const byDigest = await thin!.podman(['run', '--rm', '--network=none', `${ref.replace(/:v1$/, '')}@${digest}`, 'echo by-digest']);
  assert.equal(byDigest.stdout, 'by-digest\n', byDigest.stderr);
  // docker2thin kept the registry's manifest bytes in the store, gc keeps them, and podman reads exactly those.
  await thinfsOk(['gc', '--store', store, '--grace', '0']);
  assert.ok(await (await Store.open(store)).hasObject(digest.slice(7)), 'the manifest object survives gc');
  const regManifest = Buffer.from(await (await fetch(`http://${reg!.host}/v2/e2e/thin/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).arrayBuffer());
  const imageId = (await thin!.podmanOk(['image', 'inspect', '--format', '{{.Id}}', ref])).trim();
  await runOk(process.execPath, [THINFS_MAIN, 'podman-store', store, mnt!.mp, path.join(work, 'podman-store')]);
  assert.deepEqual(await fsp.readFile(path.join(work, 'podman-store', 'overlay-images', imageId, 'manifest')), regManifest);
  // The oracle agrees with what the layers say (not two equally wrong runs).
  assert.match(plainRun, /^# replaced by layer 3$/m);
  assert.match(plainRun, /No such file or directory/);
  assert.match(plainRun, /\/var\/lib\/data:\nfresh\.txt\n/);
  assert.match(plainRun, /^kept-by-thinfs$/m);
  assert.match(plainRun, /^uid=1000\(user\) gid=1000/m);
  assert.match(plainRun, /^GREETING=hello thin$/m);
  assert.match(plainRun, /^\/opt\/app$/m);
  assert.match(plainArgs, /^override:a1:1000$/m);
});

test('two containers of one image: a file written in one is absent from the other, the mount and the store', async (t) => {
  if (skip) { t.skip(skip); return; }
  const snap = await storeSnapshot(store);
  const ids: string[] = [];
  for (const n of ['a', 'b']) ids.push((await thin!.podmanOk(['run', '-d', '--network=none', '--name', `two-${n}`, ref, 'sleep 60'])).trim());
  await thin!.podmanOk(['exec', 'two-a', 'sh', '-c', 'echo from-a > /tmp/written; echo more >> /opt/app/new.txt 2>/dev/null || true']);
  assert.equal(await thin!.podmanOk(['exec', 'two-a', 'cat', '/tmp/written']), 'from-a\n');
  const inB = await thin!.podman(['exec', 'two-b', 'ls', '/tmp/written']);
  assert.notEqual(inB.code, 0, 'the other container does not see the write');
  for (const l of layers) await assert.rejects(fsp.access(path.join(mnt!.mp, 'layers', l.diffId.slice(7), 'tmp/written')));
  await assert.rejects(fsp.access(path.join(mnt!.mp, 'images', 'thin%3Av1', 'rootfs/tmp/written')));
  assert.deepEqual(await storeSnapshot(store), snap, 'the store is unchanged');
  // Both containers' lower layers are the mount's layer directories (one shared copy, nothing pulled).
  const mounts = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const graph = path.join(work, 'node/graph');
  assert.ok(!(await fsp.readdir(path.join(graph, 'overlay'))).some((e) => layers.some((l) => e === l.diffId.slice(7))), 'no image layer copied into podman\'s own store');
  assert.ok(mounts.includes(graph), 'container overlays are mounted');
  await thin!.podmanOk(['rm', '-f', '-t', '0', ...ids]);
});

test('an image converted while the node runs becomes runnable with nothing restarted', async (t) => {
  if (skip) { t.skip(skip); return; }
  const v2 = `${reg!.host}/e2e/thin:v2`;
  assert.notEqual((await thin!.podman(['image', 'exists', v2])).code, 0);
  await convert('v2');
  await waitFor(async () => (await thin!.podman(['image', 'exists', v2])).code === 0, 20_000, 200, 'v2 in podman images');
  const before = (await reg!.gets('e2e/thin')).length;
  assert.equal(await thin!.podmanOk(['run', '--rm', '--network=none', v2]), 'version 2\n');
  assert.equal((await reg!.gets('e2e/thin')).length, before, 'no blob fetched for v2 either');
  // v1 still runs (its layers are shared with v2 in the generated store)
  assert.equal((await thin!.podman(['run', '--rm', '--network=none', ref, 'true'])).code, 0);
});

test('podman-conf prints the storage.conf fragment and merges into an existing file', async (t) => {
  if (skip) { t.skip(skip); return; }
  const printed = await thinfsOk(['podman-conf', '/srv/podman-store']);
  assert.match(printed, /^\[storage\.options\]\nadditionalimagestores = \["\/srv\/podman-store"\]$/m);
  assert.match(printed, /^driver = "overlay"$/m);
  const f = path.join(work, 'existing.conf');
  await fsp.writeFile(f, '[storage]\ndriver = "overlay"\ngraphroot = "/x"\n\n[storage.options]\nadditionalimagestores = ["/other"]\nsize = ""\n\n[storage.options.overlay]\nmountopt = "nodev"\n');
  await thinfsOk(['podman-conf', '/srv/podman-store', '-o', f]);
  const merged = await fsp.readFile(f, 'utf8');
  assert.match(merged, /^additionalimagestores = \["\/other", "\/srv\/podman-store"\]$/m);
  assert.match(merged, /^graphroot = "\/x"$/m);
  assert.match(merged, /^mountopt = "nodev"$/m);
  // podman itself accepts the written file
  const p = await run('podman', ['info', '--format', '{{.Store.GraphOptions}}'], { env: { CONTAINERS_STORAGE_CONF: thin!.storageConf, CONTAINERS_CONF: thin!.env.CONTAINERS_CONF! } });
  assert.equal(p.code, 0, p.stderr);
  assert.match(p.stdout, /podman-store/);
});

test('thinfs mount --podman-store: the image store is ready with the mount and follows the store', async (t) => {
  if (skip) { t.skip(skip); return; }
  const dir = path.join(work, 'podman-store-2');
  const m2 = await mountStore(store, path.join(work, 'mnt2'), { cacheDir: path.join(work, 'cache2'), extra: ['--podman-store', dir] });
  try {
    // ready file written => first pass done: both converted images are there
    const imgs = JSON.parse(await fsp.readFile(path.join(dir, 'overlay-images/images.json'), 'utf8')) as Array<{ names: string[] }>;
    assert.deepEqual(imgs.flatMap((i) => i.names).sort(), [ref, `${reg!.host}/e2e/thin:v2`].sort());
    const conf = path.join(work, 'node2.conf');
    await thinfsOk(['podman-conf', dir, '--graphroot', path.join(work, 'node2/graph'), '--runroot', path.join(work, 'node2/run'), '-o', conf]);
    const p2 = await testPodman(path.join(work, 'node2'), { storageConf: conf });
    try {
      assert.match(await p2.podmanOk(['run', '--rm', '--network=none', ref, 'cat /usr/lib/pyjson/__init__.py']), /^# replaced by layer 3$/m);
      // the layers are the second mount's
      const target = await fsp.readlink(path.join(dir, 'overlay', layers[0]!.diffId.slice(7), 'diff'));
      assert.equal(target, path.join(m2.mp, 'layers', layers[0]!.diffId.slice(7)));
    } finally { await p2.cleanup(); }
  } finally { await m2.stop(); await forceUnmount(m2.mp); }
});

test('a damaged descriptor or one whose layers are not published yet is skipped with the reason; the rest is served', async (t) => {
  if (skip) { t.skip(skip); return; }
  const s2 = path.join(work, 'store-bad');
  await runOk('cp', ['-a', store, s2]);
  await fsp.writeFile(path.join(s2, 'images', 'broken%3A1.json'), '{"schemaVersion": 1, "layers": [');
  const good = JSON.parse(await fsp.readFile(path.join(s2, 'images', 'thin%3Av1.json'), 'utf8')) as { name: string; reference: string; layers: Array<{ diffId: string }> };
  const pending = { ...good, name: 'pending:1', reference: `${reg!.host}/e2e/pending:1`, layers: [...good.layers, { ...good.layers[0]!, diffId: `sha256:${'ab'.repeat(32)}` }] };
  await fsp.writeFile(path.join(s2, 'images', 'pending%3A1.json'), JSON.stringify(pending));
  const dir = path.join(work, 'podman-store-bad');
  const r = await run(process.execPath, [THINFS_MAIN, 'podman-store', s2, mnt!.mp, dir, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { images: Array<{ names: string[] }>; skipped: Array<{ name: string; reason: string }> };
  assert.deepEqual(res.images.flatMap((i) => i.names).sort(), [ref, `${reg!.host}/e2e/thin:v2`].sort());
  assert.deepEqual(res.skipped.map((x) => x.name).sort(), ['broken:1', 'pending:1']);
  assert.match(res.skipped.find((x) => x.name === 'pending:1')!.reason, /not published/);
  assert.match(res.skipped.find((x) => x.name === 'broken:1')!.reason, /JSON/);
  assert.match(r.stderr, /skipped pending:1/);
});
