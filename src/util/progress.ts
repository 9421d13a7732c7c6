// One-line progress bar on a TTY, silent otherwise so logs and CI output stay clean.

export class Progress {
  private last = 0;
  private readonly tty: boolean;
  private done = 0;
  constructor(private readonly label: string, private total: number | undefined, private readonly stream: NodeJS.WriteStream = process.stderr) {
    this.tty = !!stream.isTTY && process.env.THINFS_NO_PROGRESS === undefined;
  }
  setTotal(total: number): void { this.total = total; }
  tick(n: number): void {
    this.done += n;
    const now = Date.now();
    if (this.tty && now - this.last > 100) { this.last = now; this.render(); }
  }
  private render(): void {
    const width = 30;
    let tail: string;
    if (this.total && this.total > 0) {
      const frac = Math.min(1, this.done / this.total);
      const fill = Math.round(frac * width);
      tail = ` [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(1)}% ${fmtBytes(this.done)}/${fmtBytes(this.total)}`;
    } else {
      tail = ` ${fmtBytes(this.done)}`;
    }
    // The label (a path, which may be long) gives way first, so the bar and the numbers stay on screen.
    const cols = columns(this.stream);
    const line = `${fitLeft(this.label, cols - tail.length)}${tail}`;
    this.stream.write(`\r${line.slice(0, cols)}\x1b[K`);
  }
  finish(): void {
    if (this.tty) { this.render(); this.stream.write('\n'); }
  }
}

/** Characters a line may take: a terminal reporting no size (0 columns: a pty nobody sized) counts as 100 wide. */
function columns(stream: NodeJS.WriteStream): number {
  return (stream.columns || 100) - 1;
}

/** `s` cut from its start to at most `room` characters, the cut marked with an ellipsis. */
function fitLeft(s: string, room: number): string {
  if (s.length <= room) return s;
  return room > 1 ? `…${s.slice(s.length - room + 1)}` : '';
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}

/** One bar of a MultiProgress. */
export interface Bar { tick(n: number): void; setTotal(total: number): void; finish(note?: string): void }

/**
 * Several bars redrawn together (one line each) on a TTY, e.g. one per layer downloading in
 * parallel; silent otherwise, like Progress.
 */
export class MultiProgress {
  private readonly bars: Array<{ label: string; total?: number; done: number; note?: string }> = [];
  private drawn = 0;
  private last = 0;
  readonly tty: boolean;
  constructor(private readonly stream: NodeJS.WriteStream = process.stderr, enabled = true) {
    this.tty = enabled && !!stream.isTTY && process.env.THINFS_NO_PROGRESS === undefined;
  }
  add(label: string, total?: number): Bar {
    const b: { label: string; total?: number; done: number; note?: string } = { label, total, done: 0 };
    this.bars.push(b);
    return {
      tick: (n) => { b.done += n; this.maybeRender(); },
      setTotal: (t) => { b.total = t; },
      finish: (note) => { b.note = note ?? 'done'; this.render(); },
    };
  }
  private maybeRender(): void {
    const now = Date.now();
    if (this.tty && now - this.last > 100) { this.last = now; this.render(); }
  }
  private render(): void {
    if (!this.tty) return;
    const cols = columns(this.stream);
    const width = 24;
    let out = this.drawn ? `\x1b[${this.drawn}A` : '';
    for (const b of this.bars) {
      let line: string;
      if (b.total && b.total > 0) {
        const frac = Math.min(1, b.done / b.total);
        const fill = Math.round(frac * width);
        line = `${b.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${fmtBytes(b.done)}/${fmtBytes(b.total)}`;
      } else {
        line = `${b.label} ${fmtBytes(b.done)}`;
      }
      if (b.note) line += ` ${b.note}`;
      out += `\r${line.slice(0, cols)}\x1b[K\n`;
    }
    this.drawn = this.bars.length;
    this.stream.write(out);
  }
  /** Final redraw so the last state stays on screen. */
  end(): void { if (this.tty && this.bars.length) this.render(); }
}
