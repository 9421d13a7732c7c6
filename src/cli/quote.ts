// Quoting of file names for human-readable CLI output, with GNU ls's --quoting-style semantics
// (gnulib quotearg): a name from a layer is untrusted bytes, and raw control bytes written to a
// terminal are commands to it. Styles that GNU prints raw (literal, shell, shell-always) get
// GNU's --hide-control-chars treatment here, always: nonprintable characters become '?'.

export const QUOTING_STYLES = ['literal', 'shell', 'shell-always', 'shell-escape', 'shell-escape-always', 'c', 'escape'] as const;
export type QuotingStyle = typeof QUOTING_STYLES[number];

/** One character of a name: its bytes, whether a terminal prints it as itself, its C escape letter. */
interface Unit { bytes: Buffer; printable: boolean; letter: string | null; ascii: number }

const LETTERS: Record<number, string> = { 7: 'a', 8: 'b', 9: 't', 10: 'n', 11: 'v', 12: 'f', 13: 'r' };
const NONPRINTABLE = /[\p{Cc}\p{Cn}\p{Cs}]/u;

/** Split into characters: ASCII bytes, valid UTF-8 sequences, and single invalid bytes. */
function units(name: Buffer): Unit[] {
  const out: Unit[] = [];
  for (let i = 0; i < name.length;) {
    const b = name[i]!;
    if (b < 0x80) {
      out.push({ bytes: name.subarray(i, i + 1), printable: b >= 0x20 && b < 0x7f, letter: LETTERS[b] ?? null, ascii: b });
      i++;
      continue;
    }
    const len = b >= 0xf0 && b <= 0xf4 ? 4 : b >= 0xe0 ? 3 : b >= 0xc2 && b < 0xe0 ? 2 : 0;
    const seq = len && i + len <= name.length ? name.subarray(i, i + len) : null;
    const ch = seq ? seq.toString('utf8') : '';
    if (seq && ch.length > 0 && !ch.includes('\ufffd') && Buffer.byteLength(ch) === len) {
      out.push({ bytes: seq, printable: !NONPRINTABLE.test(ch), letter: null, ascii: -1 });
      i += len;
    } else {
      out.push({ bytes: name.subarray(i, i + 1), printable: false, letter: null, ascii: -1 });
      i++;
    }
  }
  return out;
}

const SHELL_SPECIAL = new Set([...' !"$&\'()*;<=>[^`|?\\'].map((c) => c.charCodeAt(0)));
/** Characters gnulib lets stand inside double quotes as themselves (the "it's" case). */
const DQ_COMPAT = new Set([...'%+,-./:]_ \''].map((c) => c.charCodeAt(0)));

/** gnulib's c_and_shell_quote_compat, character by character. */
function dqCompat(c: Unit, i: number, all: Unit[]): boolean {
  if (c.ascii < 0) return c.printable;
  if (DQ_COMPAT.has(c.ascii) || /[0-9A-Za-z]/.test(String.fromCharCode(c.ascii))) return true;
  if (c.ascii === 0x23 || c.ascii === 0x7e) return i === 0; // # and ~ are special (and compatible) only first
  if (c.ascii === 0x7b || c.ascii === 0x7d) return all.length === 1; // { and } only alone
  if (SHELL_SPECIAL.has(c.ascii)) return false;
  return c.printable;
}

function octal(b: number): string {
  return '\\' + b.toString(8).padStart(3, '0');
}

/** Whether the shell styles must quote: shell-special characters, and (with escapes) anything nonprintable. */
function shellNeedsQuotes(u: Unit[], escapes: boolean): boolean {
  if (u.length === 0) return true;
  if (u.length === 1 && (u[0]!.ascii === 0x7b || u[0]!.ascii === 0x7d)) return true; // a lone { or }
  return u.some((c, i) => SHELL_SPECIAL.has(c.ascii) || c.ascii === 9 || c.ascii === 10 || c.ascii === 13
    || (i === 0 && (c.ascii === 0x23 || c.ascii === 0x7e)) || (escapes && !c.printable));
}

function useDoubleQuotes(u: Unit[]): boolean {
  return u.some((c) => c.ascii === 0x27) && u.every((c, i) => dqCompat(c, i, u));
}

function shellQuote(u: Unit[], always: boolean): string {
  if (!always && !shellNeedsQuotes(u, true)) return Buffer.concat(u.map((c) => c.bytes)).toString('latin1');
  // A single quote and nothing that double quotes would change: "it's" reads better than 'it'\''s'.
  if (useDoubleQuotes(u)) return '"' + Buffer.concat(u.map((c) => c.bytes)).toString('latin1') + '"';
  let s = "'";
  let inEsc = false;
  for (const c of u) {
    if (!c.printable) {
      if (!inEsc) { s += "'$'"; inEsc = true; }
      s += c.letter ? '\\' + c.letter : [...c.bytes].map(octal).join('');
      continue;
    }
    if (inEsc) { s += "''"; inEsc = false; }
    s += c.ascii === 0x27 ? "'\\''" : c.bytes.toString('latin1');
  }
  return s + "'";
}

function cQuote(u: Unit[], quotes: boolean): string {
  let s = '';
  for (const c of u) {
    if (!c.printable) s += c.letter ? '\\' + c.letter : [...c.bytes].map(octal).join('');
    else if (c.ascii === 0x5c) s += '\\\\';
    else if (quotes && c.ascii === 0x22) s += '\\"';
    else if (!quotes && c.ascii === 0x20) s += '\\ ';
    else s += c.bytes.toString('latin1');
  }
  return quotes ? `"${s}"` : s;
}

/**
 * A name as GNU ls would print it with this quoting style (and, for the styles that would print
 * control bytes raw, with --hide-control-chars). Returns bytes: printable UTF-8 stays as it is.
 */
export function quoteName(name: Buffer, style: QuotingStyle): Buffer {
  const u = units(name);
  switch (style) {
    case 'shell-escape': return Buffer.from(shellQuote(u, false), 'latin1');
    case 'shell-escape-always': return Buffer.from(shellQuote(u, true), 'latin1');
    case 'c': return Buffer.from(cQuote(u, true), 'latin1');
    case 'escape': return Buffer.from(cQuote(u, false), 'latin1');
    default: {
      // Quote as GNU does, then every nonprintable character becomes one '?'.
      const hidden = u.map((c) => (c.printable ? c : { ...c, bytes: Buffer.from('?'), ascii: 0x3f }));
      if (style === 'literal') return Buffer.concat(hidden.map((c) => c.bytes));
      // Quoting is decided on the real characters (a newline forces quotes), the output shows '?'.
      const needs = style === 'shell-always' || shellNeedsQuotes(u, false);
      if (!needs) return Buffer.concat(hidden.map((c) => c.bytes));
      if (useDoubleQuotes(u)) return Buffer.concat([Buffer.from('"'), ...hidden.map((c) => c.bytes), Buffer.from('"')]);
      return Buffer.concat([Buffer.from("'"), ...hidden.map((c) => (c.ascii === 0x27 ? Buffer.from("'\\''") : c.bytes)), Buffer.from("'")]);
    }
  }
}

/** An untrusted name (image, layer) for a report line: shell-escape quoted, as `thinfs ls` prints names by default. */
export function quoteText(name: string): string {
  return quoteName(Buffer.from(name), 'shell-escape').toString('utf8');
}

/** Free text that may carry untrusted names (error messages of a report): control characters shown as \ooo escapes. */
export function escapeControls(text: string, keepNewlines = false): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => (keepNewlines && c === '\n' ? c : '\\' + c.charCodeAt(0).toString(8).padStart(3, '0')));
}
