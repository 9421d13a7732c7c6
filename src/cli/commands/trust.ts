// The root-of-trust commands: keygen (an Ed25519 key pair), sign (republish the store's repository manifest,
// signed), images (list image descriptors, through the signed manifest with --public-key).
import type { Command } from 'commander';
import { writeFile, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { generateSigningKey, loadPrivateKey, republishManifest, DEFAULT_VALIDITY_MS, SIGNING_KEY_ENV } from '../../store/trust.js';
import { Store, WritableStore } from '../../store/store.js';
import { ThinfsError, EXIT, NotFoundError } from '../../util/errors.js';
import { addStoreReadOptions } from '../http-options.js';
import { quoteText } from '../quote.js';

function validityMs(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new ThinfsError(`--validity: expected a positive number of days, got "${v}"`, EXIT.USAGE);
  return n * 24 * 3600_000;
}

export function registerTrustCommands(program: Command): void {
  program.command('keygen')
    .description('create an Ed25519 signing key pair: <dir>/thinfs.key (private, mode 0600: the publisher keeps it) and <dir>/thinfs.pub (give it to the nodes)')
    .argument('<dir>', 'directory for the key files (created 0700)')
    .option('--force', 'overwrite existing key files')
    .action(async (dir: string, o: { force?: boolean }) => {
      const d = resolve(dir);
      await mkdir(d, { recursive: true, mode: 0o700 });
      const k = generateSigningKey();
      const flag = o.force ? 'w' : 'wx';
      try {
        await writeFile(join(d, 'thinfs.key'), k.privatePem, { mode: 0o600, flag });
        await writeFile(join(d, 'thinfs.pub'), k.publicPem, { mode: 0o644, flag });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new ThinfsError(`${d} already holds a key (pass --force to replace it)`, EXIT.USAGE);
        throw e;
      }
      process.stdout.write(`key ${k.keyId}: private ${join(d, 'thinfs.key')}, public ${join(d, 'thinfs.pub')}\n`);
    });

  program.command('sign')
    .description('publish a new revision of the store\'s repository manifest (every layer manifest and image descriptor by hash), signed')
    .requiredOption('-s, --store <dir>', 'store directory')
    .option('--key <file>', `private key (default: $${SIGNING_KEY_ENV})`)
    .option('--validity <days>', `the signature expires after this many days (default ${DEFAULT_VALIDITY_MS / 86400_000}); re-sign before then`)
    .action(async (o: { store: string; key?: string; validity?: string }) => {
      const keyFile = o.key ?? process.env[SIGNING_KEY_ENV];
      if (!keyFile) throw new ThinfsError(`no signing key: pass --key or set ${SIGNING_KEY_ENV}`, EXIT.USAGE);
      const store = await WritableStore.openDir(o.store);
      const m = await republishManifest(store.root, { key: await loadPrivateKey(resolve(keyFile)), validityMs: validityMs(o.validity) });
      process.stdout.write(`signed revision ${m!.revision}: ${Object.keys(m!.layers).length} layers, ${Object.keys(m!.images).length} images, expires ${m!.expires}\n`);
    });

  addStoreReadOptions(program.command('images')
    .description('list the store\'s images, or print one image\'s descriptor')
    .requiredOption('-s, --store <loc>', 'store directory or http(s) URL(s)')
    .argument('[name]', 'image name: print its descriptor as JSON')
    .option('--json', 'list the names as a JSON array, exactly (the plain listing quotes names as ls does)')
    .action(async (name: string | undefined, o: { store: string; json?: boolean }) => {
      const store = await Store.open(o.store);
      if (!name && o.json) { process.stdout.write(JSON.stringify(await store.listImages()) + '\n'); return; }
      if (!name) { for (const n of await store.listImages()) process.stdout.write(`${quoteText(n)}\n`); return; }
      const d = await store.getImage(name);
      if (!d) throw new NotFoundError(`image ${name} is not in store ${store.location}`);
      process.stdout.write(JSON.stringify(d, null, 2) + '\n');
    }));
}
