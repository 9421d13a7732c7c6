import type { Command } from 'commander';

type Register = (program: Command) => void;

/**
 * Command modules by the subcommands they define. Only the module of the invoked subcommand is
 * loaded (FUSE, HTTP and metrics libraries cost ~1 s of start-up together); `--help` loads all.
 */
const commandModules: Array<{ names: string[]; load: () => Promise<Register> }> = [
  { names: ['init', 'ingest', 'layers', 'ls', 'stat', 'cat', 'export', 'gc'], load: async () => (await import('./store.js')).registerStoreCommands },
  { names: ['fsck'], load: async () => (await import('./fsck.js')).registerFsckCommands },
  { names: ['mount', 'unmount', 'umount'], load: async () => (await import('./mount.js')).registerMountCommands },
  { names: ['convert', 'pull-thin'], load: async () => (await import('./convert.js')).registerConvertCommands },
  { names: ['keygen', 'sign', 'images'], load: async () => (await import('./trust.js')).registerTrustCommands },
  { names: ['podman-store', 'podman-conf'], load: async () => (await import('./podman.js')).registerPodmanCommands },
  { names: ['trace'], load: async () => (await import('./trace.js')).registerTraceCommands },
  { names: ['publisher'], load: async () => (await import('./publisher.js')).registerPublisherCommands },
];

export async function loadCommands(argv: string[]): Promise<Register[]> {
  const first = argv.slice(2).find((a) => !a.startsWith('-'));
  const only = commandModules.filter((m) => first !== undefined && m.names.includes(first));
  return Promise.all((only.length ? only : commandModules).map((m) => m.load()));
}
