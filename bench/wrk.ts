/**
 * wrk, the `api` benchmark's load generator: a process of its own (C, one
 * event loop per thread), so that the client's cost is not charged to the
 * servers it drives. Installed from Debian's packages when missing.
 */
import { execFile, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

export interface WrkLoad {
  threads: number;
  connections: number;
  durationS: number;
}

export interface WrkReport {
  requests: number;
  requestsPerSecond: number;
  /** From wrk's histogram of every request's latency in the window. */
  latencyMs: { p50: number; p90: number; p99: number; max: number };
}

/** The bearer token reaches wrk through its environment, not its command line, which any local user can read. */
const TOKEN_SCRIPT = `
local token = os.getenv("WRK_BEARER_TOKEN")
if token then wrk.headers["Authorization"] = "Bearer " .. token end
`;

/** Installs wrk as the project's set-up installs its packages (scripts/lib.sh): as root, through apt. */
export function ensureWrk(): void {
  if (spawnSync('wrk', ['-v']).error === undefined) return;
  if (process.getuid?.() !== 0) {
    throw new Error('the api benchmark needs wrk: sudo apt-get install -y --no-install-recommends wrk');
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [
    ['update', '-qq'],
    ['install', '-y', '-qq', '--no-install-recommends', 'wrk'],
  ]) {
    const { status } = spawnSync('apt-get', args, { stdio: 'inherit', env });
    if (status !== 0) throw new Error(`apt-get ${args.join(' ')} exited with ${status}`);
  }
}

/** Writes the script that adds the bearer token to every request, into `dir`; returns its path. */
export async function tokenScript(dir: string): Promise<string> {
  const path = join(dir, 'bearer-token.lua');
  await writeFile(path, TOKEN_SCRIPT, { mode: 0o600 });
  return path;
}

const UNITS_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };

function durationMs(text: string | undefined, what: string, report: string): number {
  const match = /^([\d.]+)(us|ms|s|m)$/.exec(text ?? '');
  if (!match) throw new Error(`wrk's report has no ${what}:\n${report}`);
  return Number(match[1]) * UNITS_MS[match[2]!]!;
}

/** Reads wrk's report (with --latency); a window with refused answers or socket errors measured nothing. */
function parseReport(report: string): WrkReport {
  const failures = /Non-2xx or 3xx responses: (\d+)|Socket errors: ([^\n]+)/.exec(report);
  if (failures) throw new Error(`wrk got failures (${failures[0]}), so the window measured nothing:\n${report}`);
  const percentile = (p: number) =>
    durationMs(new RegExp(`^\\s+${p}%\\s+(\\S+)$`, 'm').exec(report)?.[1], `${p}th percentile`, report);
  const requests = Number(/(\d+) requests in /.exec(report)?.[1]);
  const requestsPerSecond = Number(/Requests\/sec:\s+([\d.]+)/.exec(report)?.[1]);
  if (!Number.isFinite(requests) || !Number.isFinite(requestsPerSecond)) {
    throw new Error(`wrk's report has no request count:\n${report}`);
  }
  const max = durationMs(/^\s+Latency\s+\S+\s+\S+\s+(\S+)/m.exec(report)?.[1], 'maximum latency', report);
  return {
    requests,
    requestsPerSecond,
    latencyMs: { p50: percentile(50), p90: percentile(90), p99: percentile(99), max },
  };
}

export async function runWrk(url: string, load: WrkLoad, script: string, token: string): Promise<WrkReport> {
  const args = ['-t', String(load.threads), '-c', String(load.connections), '-d', `${load.durationS}s`];
  const { stdout } = await promisify(execFile)('wrk', [...args, '--latency', '-s', script, url], {
    env: { ...process.env, WRK_BEARER_TOKEN: token },
  });
  return parseReport(stdout);
}
