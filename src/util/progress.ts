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
    let line: string;
    if (this.total && this.total > 0) {
      const frac = Math.min(1, this.done / this.total);
      const fill = Math.round(frac * width);
      line = `${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(1)}% ${fmtBytes(this.done)}/${fmtBytes(this.total)}`;
    } else {
      line = `${this.label} ${fmtBytes(this.done)}`;
    }
    this.stream.write(`\r${line.slice(0, (this.stream.columns ?? 100) - 1)}\x1b[K`);
  }
  finish(): void {
    if (this.tty) { this.render(); this.stream.write('\n'); }
  }
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}
