// The shipped types (src/index.d.ts) compile a strict TypeScript use of the API,
// and reject a misuse.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, '..');
const tsc = join(pkg, 'node_modules', 'typescript', 'bin', 'tsc');

async function compile(source) {
  // A scratch project that depends on the package by name, as a user's would.
  const dir = mkdtempSync(join(tmpdir(), 'botcall-sdkjs-types-'));
  try {
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(pkg, join(dir, 'node_modules', 'botcall-sdk'), 'dir');
    writeFileSync(join(dir, 'main.ts'), source);
    const args = [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--lib', 'es2022,dom', join(dir, 'main.ts')];
    return await promisify(execFile)(process.execPath, args, { cwd: dir }).then(
      () => '',
      (err) => err.stdout + err.stderr,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the types compile the API as documented, under strict', { timeout: 120_000 }, async () => {
  assert.equal(await compile(readFileSync(join(here, 'types.ts'), 'utf8')), '');
});

test('the types reject a misuse', { timeout: 120_000 }, async () => {
  const errors = await compile("import { connect } from 'botcall-sdk';\nconst call = await connect('http://x', 'r', 't', { encoding: 'mp3' });\nexport {};\n");
  assert.match(errors, /mp3/);
});
