// Platforms (os/arch/variant): this machine's, parsing, and picking one from an index.
import { ThinfsError, EXIT, NotFoundError } from '../util/errors.js';
import type { Descriptor } from './media.js';

export interface Platform { os: string; architecture: string; variant?: string }

// Node's process.arch names -> OCI/Go GOARCH names.
const ARCH: Record<string, string> = {
  x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x',
  riscv64: 'riscv64', loong64: 'loong64', mips: 'mips', mipsel: 'mipsle',
};

/** This machine's platform, as registries name it. */
export function hostPlatform(): Platform {
  const architecture = ARCH[process.arch] ?? process.arch;
  const p: Platform = { os: process.platform === 'win32' ? 'windows' : process.platform, architecture };
  if (architecture === 'arm64') p.variant = 'v8';
  if (architecture === 'arm') {
    const v = (process.config.variables as unknown as Record<string, unknown>).arm_version;
    if (v) p.variant = `v${String(v)}`;
  }
  return p;
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => !x)) {
    throw new ThinfsError(`invalid --platform "${s}" (expected os/arch[/variant], e.g. linux/amd64)`, EXIT.USAGE);
  }
  const p: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2]) p.variant = parts[2];
  return p;
}

export function formatPlatform(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

// arm64 images are often published without a variant; v8 is implied.
function variantMatches(want: Platform, have: Platform): boolean {
  if (!want.variant) return true;
  if (have.variant === want.variant) return true;
  return !have.variant && want.architecture === 'arm64' && want.variant === 'v8';
}

/** Pick the index entry for a platform; exact variant preferred. Attestation entries (unknown/unknown) are ignored. */
export function selectPlatform(manifests: Descriptor[], want: Platform, what: string): Descriptor {
  const cands = manifests.filter((m) => m.platform && m.platform.os === want.os && m.platform.architecture === want.architecture && variantMatches(want, m.platform));
  const exact = cands.find((m) => m.platform!.variant === want.variant);
  const pick = exact ?? cands[0];
  if (!pick) {
    const have = manifests.filter((m) => m.platform && m.platform.os !== 'unknown').map((m) => formatPlatform(m.platform)).join(', ');
    throw new NotFoundError(`${what}: no image for platform ${formatPlatform(want)} (available: ${have || 'none'}); choose one with --platform`);
  }
  return pick;
}
