import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ThinfsError, EXIT } from '../util/errors.js';

export interface Credentials { username: string; password: string }

export interface Challenge { scheme: string; params: Record<string, string> }

/**
 * Parse a WWW-Authenticate header: `Bearer realm="https://auth",service="reg",scope="repository:x:pull"`.
 * Quoted values may contain commas and escaped quotes; several challenges may follow each other.
 */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  if (!header) return [];
  const text = Array.isArray(header) ? header.join(', ') : header;
  const out: Challenge[] = [];
  const re = /\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)/y;
  let i = 0;
  while (i < text.length) {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m) break;
    const ch: Challenge = { scheme: m[1]!.toLowerCase(), params: {} };
    i = re.lastIndex;
    // key=value or key="quoted" pairs until the next bare token (a new scheme)
    const kv = /\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/y;
    for (;;) {
      kv.lastIndex = i;
      const p = kv.exec(text);
      if (!p) break;
      ch.params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
      i = kv.lastIndex;
    }
    out.push(ch);
    while (i < text.length && (text[i] === ',' || text[i] === ' ')) i++;
  }
  return out;
}

interface AuthEntry { auth?: string; username?: string; password?: string; identitytoken?: string }
interface AuthFile { auths?: Record<string, AuthEntry>; credHelpers?: Record<string, string>; credsStore?: string }

/** Credential files in the order podman/skopeo and docker read them. */
function authFileCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  files.push(join(env.DOCKER_CONFIG ?? join(env.HOME ?? homedir(), '.docker'), 'config.json'));
  return files;
}

function normalizeKey(k: string): string {
  return k.replace(/^https?:\/\//, '').replace(/\/v[12]\/?$/, '').replace(/\/+$/, '');
}

function decodeEntry(e: AuthEntry, file: string, key: string): Credentials | null {
  if (e.username && e.password) return { username: e.username, password: e.password };
  if (e.auth) {
    const dec = Buffer.from(e.auth, 'base64').toString('utf8');
    const c = dec.indexOf(':');
    if (c < 0) throw new ThinfsError(`${file}: auths["${key}"].auth is not base64("user:password")`, EXIT.AUTH);
    return { username: dec.slice(0, c), password: dec.slice(c + 1) };
  }
  return null;
}

/**
 * Credentials for registry/repository from containers-auth.json style files (also ~/.docker/config.json).
 * The most specific key wins ("host/ns/repo" over "host/ns" over "host"), as containers-auth.json(5) says.
 * With an explicit file (--authfile), only that file is read.
 */
export async function findCredentials(registry: string, repository: string, opts: { authFile?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ creds: Credentials; source: string } | null> {
  const files = opts.authFile ? [opts.authFile] : authFileCandidates(opts.env);
  const hostKeys = registry === 'docker.io' ? ['docker.io', 'index.docker.io', 'registry-1.docker.io'] : [registry];
  const parts = repository.split('/');
  for (const file of files) {
    let text: string;
    try { text = await readFile(file, 'utf8'); } catch (e) {
      if (opts.authFile) throw new ThinfsError(`cannot read auth file ${file}: ${(e as Error).message}`, EXIT.NOT_FOUND);
      continue;
    }
    let j: AuthFile;
    try { j = JSON.parse(text) as AuthFile; } catch (e) {
      throw new ThinfsError(`${file}: invalid JSON (${(e as Error).message})`, EXIT.BAD_INPUT);
    }
    const auths = new Map<string, [string, AuthEntry]>();
    for (const [k, v] of Object.entries(j.auths ?? {})) auths.set(normalizeKey(k), [k, v]);
    for (const host of hostKeys) {
      for (let n = parts.length; n >= 0; n--) {
        const key = n === 0 ? host : `${host}/${parts.slice(0, n).join('/')}`;
        const hit = auths.get(key);
        if (!hit) continue;
        const creds = decodeEntry(hit[1], file, hit[0]);
        if (creds) return { creds, source: `${file} (${hit[0]})` };
      }
    }
  }
  return null;
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}
