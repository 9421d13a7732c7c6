// Real web servers for HTTP store tests and benches: a stock nginx serving a store directory (with the
// README's cache headers), an nginx proxy_cache in front of an origin (reverse site cache) and a Squid
// forward proxy (the CernVM-FS site cache). Each listens on a port the OS chose, writes its logs in its
// own directory and is stopped by stop(), even when the test failed.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';

export interface WebServer {
  url: string;
  dir: string;
  /** Access log lines so far (for the proxies: their cache status is the last field). */
  accessLog(): Promise<string[]>;
  stop(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
    s.on('error', rej);
  });
}

async function waitUp(url: string, child: ChildProcess, what: string, proxy = false): Promise<void> {
  let exited = false;
  child.once('exit', () => { exited = true; });
  for (let i = 0; i < 200; i++) {
    if (exited) throw new Error(`${what} exited at start`);
    try {
      if (proxy) {
        // A forward proxy answers its own URL (an error page) once it listens.
        await fetch(url);
        return;
      }
      const r = await fetch(url);
      if (r.status < 500) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not come up at ${url}`);
}

function stopper(child: ChildProcess): () => Promise<void> {
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  };
}

// Workers as root when the test runs as root: test directories are private (0700) to their creator.
const COMMON = (dir: string) => `${process.getuid?.() === 0 ? 'user root;' : ''} daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log; worker_processes 1;
events { worker_connections 512; }`;
const TEMPS = (dir: string) => `client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;`;

/**
 * The store's cache headers, as the README's nginx example gives them: objects and layer manifests are named by
 * content (immutable, cacheable for a year); the repository manifest and image descriptors change in place
 * (caches must revalidate them).
 */
export const NGINX_STORE_LOCATIONS = `
    location /data/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
    location /packs/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
    location /indexes/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
    location /layers/ { autoindex on; autoindex_format json; add_header Cache-Control "public, max-age=31536000, immutable"; }
    location /images/ { autoindex on; autoindex_format json; add_header Cache-Control "no-cache"; }
    location = /thinfs-published { add_header Cache-Control "no-cache"; }`;

/** A stock nginx serving `root` (a store directory) with the README's configuration. $body_bytes_sent is logged. */
export async function startNginx(root: string, dir: string): Promise<WebServer> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, `${COMMON(dir)}
http { log_format bytes '$request_method $request_uri $status $body_bytes_sent'; access_log ${dir}/access.log bytes; ${TEMPS(dir)}
  server { listen 127.0.0.1:${port}; root ${root}; ${NGINX_STORE_LOCATIONS} } }
`);
  const child = spawn('nginx', ['-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await waitUp(`${url}/thinfs-store.json`, child, 'nginx');
  return { url, dir, accessLog: async () => lines(join(dir, 'access.log')), stop: stopper(child) };
}

/** nginx proxy_cache in front of `origin`: concurrent misses of one URL are merged (proxy_cache_lock). */
export async function startNginxCache(origin: string, dir: string): Promise<WebServer> {
  await mkdir(join(dir, 'cache'), { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, `${COMMON(dir)}
http { log_format cache '$request_method $request_uri $status $body_bytes_sent $upstream_cache_status'; access_log ${dir}/access.log cache; ${TEMPS(dir)}
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=store:16m max_size=4g inactive=1d use_temp_path=off;
  server { listen 127.0.0.1:${port};
    location / { proxy_pass ${origin}; proxy_cache store; proxy_cache_lock on; proxy_cache_lock_timeout 60s; proxy_cache_revalidate on;
      proxy_cache_valid 200 1d; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
`);
  const child = spawn('nginx', ['-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await waitUp(`${url}/thinfs-store.json`, child, 'nginx proxy_cache');
  return { url, dir, accessLog: async () => lines(join(dir, 'access.log')), stop: stopper(child) };
}

/**
 * Squid (Debian) as a forward proxy with a memory cache; concurrent misses collapse into one origin fetch.
 * Squid drops root for the proxy user, which cannot enter private test directories: its files live in a
 * directory of its own under the system temp dir, removed at stop.
 */
export async function startSquid(extraConf = ''): Promise<WebServer> {
  const dir = await mkdtemp(join(tmpdir(), 'thinfs-squid-'));
  await chmod(dir, 0o755);
  const port = await freePort();
  const conf = join(dir, 'squid.conf');
  await writeFile(conf, `http_port 127.0.0.1:${port}
pid_filename ${dir}/squid.pid
cache_effective_user proxy
cache_mem 512 MB
maximum_object_size_in_memory 16 MB
maximum_object_size 16 MB
memory_replacement_policy lru
access_log stdio:${dir}/access.log squid
cache_log ${dir}/cache.log
cache_store_log none
coredump_dir ${dir}
acl local src 127.0.0.1/32
http_access allow local
http_access deny all
collapsed_forwarding on
refresh_pattern . 0 20% 4320
shutdown_lifetime 0 seconds
strip_query_terms off
${extraConf}
`);
  await chown(dir, ...(await proxyIds()));
  const child = spawn('squid', ['-N', '-f', conf], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await waitUp(url, child, 'squid', true);
  return {
    url, dir,
    accessLog: async () => lines(join(dir, 'access.log')),
    stop: async () => { await stopper(child)(); await rm(dir, { recursive: true, force: true }); },
  };
}

async function proxyIds(): Promise<[number, number]> {
  const pw = await readFile('/etc/passwd', 'utf8');
  const f = pw.split('\n').find((l) => l.startsWith('proxy:'))?.split(':');
  return f ? [Number(f[2]), Number(f[3])] : [0, 0];
}

async function lines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
}
