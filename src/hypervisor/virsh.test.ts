/**
 * A domain's XML from `virsh dumpxml --security-info` may carry graphics
 * passwords: it stays in memory and reaches `virsh define` on its standard
 * input. A shell script stands in for virsh and records what it was given
 * and what the system temp directory held while it ran.
 */
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Virsh } from './virsh.js';

const SECRET_XML = "<domain><name>web-1</name><graphics type='vnc' passwd='not-for-any-file'/></domain>";
const fake = await mkdtemp(join(tmpdir(), 'vtpm-fake-virsh-'));
const systemTemp = await mkdtemp(join(tmpdir(), 'vtpm-virsh-system-temp-'));
const saved = { PATH: process.env.PATH, TMPDIR: process.env.TMPDIR };

before(async () => {
  await writeFile(
    join(fake, 'virsh'),
    [
      '#!/bin/sh',
      `printf '%s\\n' "$@" > '${fake}/args'`,
      `find "\${TMPDIR:-/tmp}" -mindepth 1 > '${fake}/temp-listing'`,
      'case "$3" in',
      `  define) cat "$4" > '${fake}/defined'; echo "Domain 'web-1' defined from $4" ;;`,
      `  dumpxml) cat '${fake}/domain.xml' ;;`,
      'esac',
      '',
    ].join('\n'),
  );
  await chmod(join(fake, 'virsh'), 0o755);
  await writeFile(join(fake, 'domain.xml'), SECRET_XML);
  process.env.PATH = `${fake}:${process.env.PATH}`;
  // What os.tmpdir() answers while the tests run: a directory of their own, empty.
  process.env.TMPDIR = systemTemp;
});
after(async () => {
  for (const [name, value] of Object.entries(saved))
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  await rm(fake, { recursive: true, force: true });
  await rm(systemTemp, { recursive: true, force: true });
});

const recorded = async (file: string) => readFile(join(fake, file), 'utf8');

describe('virsh', () => {
  it('reads a domain with its security information into memory', async () => {
    assert.equal(await new Virsh('test:///default').domainXml('web-1'), SECRET_XML);
    assert.deepEqual((await recorded('args')).trim().split('\n'), [
      '-c',
      'test:///default',
      'dumpxml',
      '--inactive',
      '--security-info',
      'web-1',
    ]);
  });

  it('defines a domain from its standard input: nothing of the XML lands in the system temp directory', async () => {
    await new Virsh('test:///default').define(SECRET_XML);
    assert.deepEqual((await recorded('args')).trim().split('\n'), ['-c', 'test:///default', 'define', '/dev/stdin']);
    assert.equal(await recorded('defined'), SECRET_XML);
    assert.equal(await recorded('temp-listing'), '', 'the system temp directory held files while virsh ran');
    assert.deepEqual(await readdir(systemTemp), []);
  });
});
