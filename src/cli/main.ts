#!/usr/bin/env node
// vfu's entry.  The commands that take part in a migration compile
// eagerly (see eager.ts), so this module sets that up before it loads the
// program (program.ts), whose modules are then compiled under it.
import { compileEagerly } from './eager.js';

const EAGER_COMMANDS = new Set(['serve', 'migrate', 'receive', 'demo']);
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
if (command !== undefined && EAGER_COMMANDS.has(command) && process.env['VFU_LAZY_COMPILE'] === undefined) compileEagerly();
await import('./program.js');
