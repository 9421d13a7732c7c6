// An emulated wide-area link on loopback, for benchmarks: a shared bandwidth cap (Linux `tc` htb on
// `lo`, matched by the server's port so the rest of the machine is untouched) and added round-trip
// latency (a TCP proxy of our own: this kernel has no netem). Every byte the bench's clients read
// from a server goes through one proxy port, so N simulated nodes share one capped link, as nodes
// behind one uplink do. Traffic never leaves 127.0.0.1.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { spawnSync } from 'node:child_process';

function tc(args: string[], allowFail = false): void {
  const r = spawnSync('tc', args, { encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) throw new Error(`tc ${args.join(' ')}: ${r.stderr.trim() || r.error?.message}`);
}

/**
 * Caps what `lo` carries FROM `ports` (server -> client direction, where the bytes are) to
 * `mbit` Mbit/s in total. An htb root sends unmatched traffic to a class too fast to matter, so
 * the rest of the machine is untouched (this kernel has htb and u32, not prio or netem).
 * Loopback's MTU is 64 KiB, so the shaped class's burst holds several such packets.
 * Benches run by several people at once on one machine each get a link of their own: the htb root
 * is shared (made by whoever comes first), each caller adds its own class and its own filter
 * priority, and removes only those (the root goes with the last class).
 * Returns the function that removes the shaping.
 */
export function shapeLoopback(ports: number[], mbit: number): () => void {
  const show = (what: string[]) => spawnSync('tc', [...what, 'show', 'dev', 'lo'], { encoding: 'utf8' }).stdout ?? '';
  if (!/qdisc htb 1: root/.test(show(['qdisc']))) {
    tc(['qdisc', 'del', 'dev', 'lo', 'root'], true);
    tc(['qdisc', 'add', 'dev', 'lo', 'root', 'handle', '1:', 'htb', 'default', '10', 'r2q', '100000'], true);
    tc(['class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:10', 'htb', 'rate', '40gbit', 'quantum', '200000'], true);
  }
  // A class id and filter priority no other caller holds (by pid; the next free one if taken).
  const taken = show(['class']);
  let minor = 0x100 + (process.pid % 0xe000);
  while (taken.includes(`class htb 1:${minor.toString(16)} `)) minor++;
  const cls = `1:${minor.toString(16)}`;
  const prio = String(2 + (minor % 0xfff0));
  tc(['class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', cls, 'htb', 'rate', `${mbit}mbit`, 'ceil', `${mbit}mbit`,
    'burst', '256k', 'cburst', '256k', 'quantum', '65536']);
  for (const p of ports) {
    tc(['filter', 'add', 'dev', 'lo', 'protocol', 'ip', 'parent', '1:0', 'prio', prio, 'u32', 'match', 'ip', 'sport', String(p), '0xffff', 'flowid', cls]);
  }
  return () => {
    tc(['filter', 'del', 'dev', 'lo', 'parent', '1:0', 'protocol', 'ip', 'prio', prio], true);
    tc(['class', 'del', 'dev', 'lo', 'classid', cls], true);
    const left = show(['class']).split('\n').filter((l) => l.startsWith('class htb 1:') && !l.startsWith('class htb 1:10 '));
    if (!left.length) tc(['qdisc', 'del', 'dev', 'lo', 'root'], true);
  };
}

export interface DelayProxy {
  port: number;
  /** Bytes sent to clients, and connections accepted, since start. */
  stats(): { bytesDown: number; bytesUp: number; connections: number };
  close(): Promise<void>;
}

/**
 * A TCP proxy adding `rttMs / 2` in each direction. Data keeps its order: each direction is a queue
 * released `oneWay` ms after arrival, so a request/response exchange costs one extra round trip,
 * as on a real link, and bulk transfers are not slowed beyond that (the bandwidth cap is tbf's job).
 */
export function startDelayProxy(targetPort: number, rttMs: number, host = '127.0.0.1'): Promise<DelayProxy> {
  const oneWay = rttMs / 2;
  let bytesDown = 0;
  let bytesUp = 0;
  let connections = 0;
  const sockets = new Set<Socket>();

  const pipeDelayed = (from: Socket, to: Socket, count: (n: number) => void): void => {
    from.on('data', (b: Buffer) => {
      count(b.length);
      if (oneWay <= 0) { if (!to.write(b)) from.pause(); return; }
      // Hold the reader while this piece waits, so memory stays bounded by the socket buffers.
      setTimeout(() => { if (!to.destroyed && !to.write(b)) from.pause(); }, oneWay);
    });
    to.on('drain', () => from.resume());
    from.on('end', () => setTimeout(() => to.end(), oneWay));
    from.on('error', () => to.destroy());
  };

  const server: Server = createServer((client) => {
    connections++;
    const upstream = connect(targetPort, host);
    for (const s of [client, upstream]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.setNoDelay(true); }
    pipeDelayed(client, upstream, (n) => { bytesUp += n; });
    pipeDelayed(upstream, client, (n) => { bytesDown += n; });
    // A close travels like data: after the bytes queued before it.
    client.on('close', () => setTimeout(() => upstream.destroy(), oneWay + 1));
    upstream.on('close', () => setTimeout(() => { if (!client.writableEnded) client.end(); }, oneWay + 1));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => {
      const addr = server.address();
      if (!addr || typeof addr === 'string') { reject(new Error('proxy did not bind')); return; }
      resolve({
        port: addr.port,
        stats: () => ({ bytesDown, bytesUp, connections }),
        close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
      });
    });
  });
}
