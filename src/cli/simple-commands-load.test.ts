/**
 * A simple command loads the command definitions, the HTTP client and commander, and nothing of the
 * service: no store, HTTP server, operations, key manager backend, virsh or pino (issue #15: the CLI took
 * 360-390 ms for what the API answers in 6-12 ms, most of it loading what it never ran). Each command runs
 * as its own process, its action carried out whole against a stand-in API that answers every request
 * with one document fitting every command's reading; a loader hook records every module the process
 * loads, ES modules through `module.register` and CommonJS ones from `require.cache`. What is asserted is
 * the set of modules, not a time.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const DIST_SRC = fileURLToPath(new URL('../', import.meta.url));
const VM = '7f5e2a8c-3b1d-4e6f-9a0b-1c2d3e4f5a6b';

/** The hooks module, on the loader's own thread: every URL it is asked to load, appended to a file. */
const HOOKS = `import { appendFileSync } from 'node:fs';
let file;
export function initialize(data) { file = data.file; }
export async function load(url, context, next) { appendFileSync(file, url + '\\n'); return next(url, context); }`;

/** Given to `node --import`: registers the hooks, and at exit adds the CommonJS modules required. */
const recorder = (file: string) => `import { register, createRequire } from 'node:module';
import { appendFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
const file = ${JSON.stringify(file)};
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(HOOKS)}), { data: { file } });
const cache = createRequire(process.cwd() + '/').cache;
process.on('exit', () => appendFileSync(file,
  Object.keys(cache).map((path) => pathToFileURL(path).href + '\\n').join('')));`;

/** What a simple command may load of the product: its definitions and what their options name, the client. */
const ALLOWED_SOURCES = [
  /^cli\/(?!.*-actions\.js$)(?!logger\.js$)[\w-]+\.js$/,
  /^api\/(client|secure-url|request-id-header)\.js$/,
  /^errors\.js$/,
  /^tpm-spec\/(tpm-spec|secret-security)\.js$/,
  /^auth\/(policy|admin-token-path)\.js$/,
  /^keys\/(owner-only-file|settings)\.js$/,
  /^vault\/retention\.js$/,
  /^hypervisor\/libvirt-uri\.js$/,
  /^swtpm\/ca-name\.js$/,
];
const ALLOWED_PACKAGES = new Set(['commander']);

/** One document every command below can read, whatever it asked for. */
const ANSWER = JSON.stringify({
  vm: VM,
  status: 'running',
  socket: '/run/vtpm/x.sock',
  qemu_args: ['-tpmdev', 'emulator'],
  libvirt_xml: '<tpm/>',
  vtpms: [],
  generations: [],
  hosts: [],
  ready: {},
  size: 0,
});

let workDir: string;
let url: string;
const api = createServer((request, response) => {
  request.resume();
  request.on('end', () => {
    if (request.method === 'DELETE') response.writeHead(204).end();
    else response.writeHead(200, { 'content-type': 'application/json' }).end(ANSWER);
  });
});

before(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'vtpm-cli-loads-'));
  await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});
after(async () => {
  api.close();
  await rm(workDir, { recursive: true, force: true });
});

let runs = 0;

/** The modules `vtpm ARGS` loaded, as paths under dist/src or package names, and how it exited. */
async function loadedBy(
  args: string[],
): Promise<{ code: number; stderr: string; sources: string[]; packages: string[] }> {
  const file = join(workDir, `loaded-${runs++}`);
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('VTPM_')));
  const env = { ...base, VTPM_URL: url, VTPM_TOKEN: 'a-token', VTPM_DATA_DIR: workDir };
  const importer = `data:text/javascript,${encodeURIComponent(recorder(file))}`;
  const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve) =>
    execFile(process.execPath, ['--import', importer, CLI, ...args], { env }, (error, _stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stderr }),
    ),
  );
  const urls = (await readFile(file, 'utf8')).split('\n').filter((line) => line.startsWith('file:'));
  const distSrc = pathToFileURL(DIST_SRC).href;
  const sources = new Set<string>();
  const packages = new Set<string>();
  for (const loaded of urls) {
    const inPackage = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(loaded);
    if (inPackage) packages.add(inPackage[1]!);
    else if (loaded.startsWith(distSrc)) sources.add(loaded.slice(distSrc.length));
  }
  return { code, stderr, sources: [...sources].sort(), packages: [...packages].sort() };
}

const SIMPLE_COMMANDS = [
  ['list'],
  ['--json', 'show', VM],
  ['create', '--vm', VM, '--version', '2.0'],
  ['start', VM],
  ['stop', VM],
  ['delete', '--yes', VM],
  ['qemu-args', VM],
  ['history', VM],
  ['hosts'],
  ['pool'],
];

describe('what a simple command loads', () => {
  for (const args of SIMPLE_COMMANDS) {
    it(`vtpm ${args.join(' ')}: nothing of the service`, async () => {
      const run = await loadedBy(args);
      assert.equal(run.code, 0, run.stderr);
      // The recorder saw the program itself: an empty record would pass what follows for nothing.
      assert.ok(run.sources.includes('cli/main.js') && run.sources.includes('api/client.js'), run.sources.join(' '));
      assert.deepEqual(
        run.packages.filter((name) => !ALLOWED_PACKAGES.has(name)),
        [],
        'packages loaded besides commander',
      );
      assert.deepEqual(
        run.sources.filter((source) => !ALLOWED_SOURCES.some((allowed) => allowed.test(source))),
        [],
        'modules of the product loaded besides the command definitions and the client',
      );
    });
  }

  it('the recorder sees what a command loads late: `vtpm serve` refused after loading the service', async () => {
    // An option serve refuses only once its implementation is loaded: the service's modules are recorded.
    const run = await loadedBy(['serve', '--host-tpm', 'device:/dev/null', '--listen', '127.0.0.1:0']);
    assert.equal(run.code, 2, run.stderr);
    assert.ok(run.packages.includes('pino'), run.packages.join(' '));
    assert.ok(run.sources.includes('serve/start-server.js'), run.sources.join(' '));
  });
});
