import type { Command } from 'commander';
import { registerStoreCommands } from './store.js';
import { registerMountCommands } from './mount.js';
import { registerConvertCommands } from './convert.js';
import { registerPublisherCommands } from './publisher.js';

/** Registration list: each area adds its command module here. */
export const commands: Array<(program: Command) => void> = [
  registerStoreCommands,
  registerMountCommands,
  registerConvertCommands,
  registerPublisherCommands,
];
