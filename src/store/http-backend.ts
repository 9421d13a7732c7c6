import type { Agent } from 'undici';
import type { Backend } from './backend.js';
import { ThinfsError } from '../util/errors.js';

/**
 * A store served as static files by any web server, through any HTTP caches (the CernVM-FS
 * Stratum-1 model). Several base URLs give ordered failover: the first healthy mirror wins,
 * and a failed mirror is retried again after a cool-down.
 */
export class HttpBackend implements Backend {
  // undici is loaded on first use: most commands never talk HTTP, and it costs ~0.2 s to load.
  private undici: Promise<{ agent: Agent; request: typeof import('undici').request }> | null = null;
  private http() {
    this.undici ??= import('undici').then((u) => ({ agent: new u.Agent({ connections: 16, keepAliveTimeout: 30_000, pipelining: 1 }), request: u.request }));
    return this.undici;
  }
  private readonly downUntil = new Map<string, number>();
  constructor(readonly bases: string[], private readonly retries = 3) {
    this.bases = bases.map((b) => b.replace(/\/+$/, ''));
  }
  get location(): string { return this.bases.join(','); }

  private mirrors(): string[] {
    const now = Date.now();
    const up = this.bases.filter((b) => (this.downUntil.get(b) ?? 0) <= now);
    return up.length ? up : this.bases;
  }

  async read(rel: string): Promise<Buffer | null> {
    let lastErr: unknown;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      for (const base of this.mirrors()) {
        try {
          const { agent, request } = await this.http();
          const res = await request(`${base}/${rel}`, { dispatcher: agent, headersTimeout: 30_000, bodyTimeout: 60_000 });
          if (res.statusCode === 404) { await res.body.dump(); return null; }
          if (res.statusCode !== 200) {
            await res.body.dump();
            throw new ThinfsError(`GET ${base}/${rel}: HTTP ${res.statusCode}`);
          }
          return Buffer.from(await res.body.arrayBuffer());
        } catch (e) {
          lastErr = e;
          this.downUntil.set(base, Date.now() + 30_000);
        }
      }
      await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    }
    throw new ThinfsError(`HTTP store ${this.location}: cannot read ${rel}: ${(lastErr as Error)?.message ?? lastErr}`);
  }

  async exists(rel: string): Promise<boolean> {
    for (const base of this.mirrors()) {
      try {
        const { agent, request } = await this.http();
        const res = await request(`${base}/${rel}`, { method: 'HEAD', dispatcher: agent });
        await res.body.dump();
        if (res.statusCode === 200) return true;
        if (res.statusCode === 404) return false;
      } catch { this.downUntil.set(base, Date.now() + 30_000); }
    }
    throw new ThinfsError(`HTTP store ${this.location}: cannot check ${rel}`);
  }

  /** Directory listing needs an index the web server generates (nginx `autoindex_format json`). */
  async list(dir: string): Promise<string[]> {
    const body = await this.read(`${dir}/`);
    if (!body) return [];
    try {
      const entries = JSON.parse(body.toString('utf8')) as Array<{ name: string; type: string }>;
      return entries.filter((e) => e.type === 'file' && !e.name.startsWith('.')).map((e) => e.name);
    } catch {
      return [];
    }
  }

  async close(): Promise<void> { if (this.undici) await (await this.undici).agent.close(); }
}
