// The realistic image the cluster benches use: Debian bookworm minbase (debootstrap) as one layer,
// python3 installed on top as a second, packed by umoci into an OCI layout with gzip layers and
// a config (Entrypoint, Env, WorkingDir). Built once, cached outside the checkout (never committed)
// in $THINFS_BENCH_CACHE (default /var/cache/thinfs-bench), and pushed to a registry per run
// (realisticImageInRegistry: the registry reference and the OCI directory).
// The Debian mirror is the one apt is configured with on this machine.
import { mkdir, readFile, rm, stat, writeFile, rename } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { startRegistry, type RegistryServer } from '../../test/fixtures/images.js';

const BENCH_CACHE = process.env.THINFS_BENCH_CACHE ?? '/var/cache/thinfs-bench';
export const IMAGE_TAG = 'python';

export interface RealisticImage {
  /** OCI layout directory; the image is tagged IMAGE_TAG. */
  layout: string;
  /** `oci:DIR:TAG`, for skopeo and docker2thin. */
  ociRef: string;
  /** Sum of the compressed layer blobs, and the layers' count. */
  compressedBytes: number;
  layers: number;
}

function sh(cmd: string, args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (b) => { out += b; });
    c.stderr.on('data', (b) => { err += b; });
    c.on('error', reject);
    c.on('close', (code) => code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.slice(-2000)}`)));
  });
}

/** The first Debian archive URI apt is configured with (deb822 or one-line format). */
async function aptMirror(): Promise<string> {
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    const text = await readFile(f, 'utf8').catch(() => '');
    const m = /^URIs:\s*(\S+)/m.exec(text) ?? /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(text);
    if (m && !m[1]!.includes('security')) return m[1]!;
  }
  throw new Error('no Debian mirror found in apt sources');
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Builds the image once (a few minutes: debootstrap + apt), then returns the cached layout. */
export async function realisticImage(log: (s: string) => void = (s) => console.error(s)): Promise<RealisticImage> {
  const dir = join(BENCH_CACHE, 'realistic-v1');
  const layout = join(dir, 'oci');
  if (!(await exists(join(dir, 'complete')))) {
    for (const t of ['debootstrap', 'umoci', 'skopeo']) {
      await sh('sh', ['-c', `command -v ${t}`]).catch(() => { throw new Error(`the realistic image needs ${t} (bash scripts/setup.sh installs it)`); });
    }
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const mirror = await aptMirror();
    const tmpLayout = join(dir, 'oci.tmp');
    log(`realistic image: debootstrap --variant=minbase bookworm (once; cached in ${dir})`);
    await sh('umoci', ['init', '--layout', tmpLayout]);
    await sh('umoci', ['new', '--image', `${tmpLayout}:base`]);
    const bundle = join(dir, 'bundle');
    await sh('umoci', ['unpack', '--image', `${tmpLayout}:base`, bundle]);
    const rootfs = join(bundle, 'rootfs');
    await sh('debootstrap', ['--variant=minbase', 'bookworm', rootfs, mirror]);
    await sh('chroot', [rootfs, 'apt-get', 'clean']);
    await sh('umoci', ['repack', '--image', `${tmpLayout}:base`, bundle]);
    log('realistic image: python3 layer');
    // A fresh unpack of the base, so the next repack is a layer of its own (the diff against it).
    await rm(bundle, { recursive: true, force: true });
    await sh('umoci', ['unpack', '--image', `${tmpLayout}:base`, bundle]);
    await writeFile(join(rootfs, 'etc/resolv.conf'), await readFile('/etc/resolv.conf').catch(() => Buffer.alloc(0)));
    await sh('chroot', [rootfs, 'apt-get', 'update', '-qq']);
    await sh('chroot', [rootfs, 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'python3'], { env: { DEBIAN_FRONTEND: 'noninteractive' } });
    await sh('chroot', [rootfs, 'apt-get', 'clean']);
    await rm(join(rootfs, 'var/lib/apt/lists'), { recursive: true, force: true });
    await mkdir(join(rootfs, 'var/lib/apt/lists/partial'), { recursive: true });
    await writeFile(join(rootfs, 'etc/resolv.conf'), '');
    await sh('umoci', ['repack', '--image', `${tmpLayout}:base`, bundle]);
    await sh('umoci', ['config', '--image', `${tmpLayout}:base`, '--tag', IMAGE_TAG,
      '--config.entrypoint', '/usr/bin/python3', '--config.workingdir', '/root',
      '--config.env', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', '--config.env', 'LANG=C.UTF-8']);
    await sh('umoci', ['gc', '--layout', tmpLayout]);
    await rm(bundle, { recursive: true, force: true });
    await rename(tmpLayout, layout);
    await writeFile(join(dir, 'complete'), new Date().toISOString());
  }
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === IMAGE_TAG);
  if (!desc) throw new Error(`${layout} has no ${IMAGE_TAG} tag`);
  const blob = (d: string) => join(layout, 'blobs', 'sha256', d.replace(/^sha256:/, ''));
  const manifest = JSON.parse(await readFile(blob(desc.digest), 'utf8')) as { layers: Array<{ size: number }> };
  return {
    layout,
    ociRef: `oci:${layout}:${IMAGE_TAG}`,
    compressedBytes: manifest.layers.reduce((a, l) => a + l.size, 0),
    layers: manifest.layers.length,
  };
}

export interface RealisticImageInRegistry extends RealisticImage {
  /** `HOST:PORT/bench/python:latest` on a docker-registry on loopback (for docker2thin, skopeo `docker://`). */
  ref: string;
  registry: RegistryServer;
}

/**
 * The realistic image (built once, cached) pushed to a fresh docker-registry on loopback whose storage lives in
 * `workDir`; the caller stops the registry (`registry.stop()`). Returns both the registry reference and the OCI dir.
 */
export async function realisticImageInRegistry(workDir: string, log: (s: string) => void = (s) => console.error(s)): Promise<RealisticImageInRegistry> {
  const img = await realisticImage(log);
  const registry = await startRegistry(join(workDir, 'registry'));
  try {
    const ref = `${registry.host}/bench/python:latest`;
    await sh('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', img.ociRef, `docker://${ref}`]);
    return { ...img, ref, registry };
  } catch (e) {
    await registry.stop();
    throw e;
  }
}
