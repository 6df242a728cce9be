/**
 * An agent that starts again (after a crash or a kill -9 of `vtpm agent`)
 * finds what its swtpms left behind: one that exited while no agent watched
 * it has its last state reported, then its exit, as that launch's, so that
 * the vTPM ends stopped with that state in the vault rather than running
 * forever (and its state overwritten by the vault's older head at the next
 * start). The report names the states the agent before had recorded as the
 * ones the control plane may hold, so that a copy of it replayed later is
 * refused as stale.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import type { StateChange, VtpmExit } from './host-agent.js';
import { LocalHostAgent } from './local-host-agent.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** The pid of a process that has exited: no swtpm serves it. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.once('exit', resolve));
  return child.pid!;
}

/**
 * What a launch of swtpm leaves in the agent's directories once it has gone; `lineage`: the states its
 * agent recorded as those the control plane may hold.
 */
async function leftBehind(
  dataDir: string,
  runDir: string,
  how: 'killed' | 'exited',
  lineage: string[] = [],
): Promise<StateChange> {
  const change = {
    vm: randomUUID(),
    kind: 'tpm' as const,
    data: Buffer.from(`the state swtpm wrote last, then it was ${how}`),
    final: true,
    instance: randomUUID(),
    after: lineage,
  };
  if (lineage.length > 0) await writeFile(join(runDir, `${change.vm}.tpm.lineage`), `${lineage.join('\n')}\n`);
  await mkdir(join(dataDir, 'tpm', change.vm), { recursive: true });
  await writeFile(join(dataDir, 'tpm', change.vm, 'tpm2-00.permall'), change.data);
  await writeFile(join(runDir, `${change.vm}.instance`), `${change.instance}\n`);
  // swtpm removes its pid file when it exits by itself (its guest left), not when it is killed.
  if (how === 'killed') await writeFile(join(runDir, `${change.vm}.pid`), `${await deadPid()}\n`);
  return change;
}

function openAgent(dir: string, dataDir: string, runDir: string): Promise<LocalHostAgent> {
  return LocalHostAgent.open({
    dataDir,
    runDir,
    scratchDir: join(dir, 'scratch'),
    logger: pino({ level: 'silent' }),
    hostName: 'host-b',
  });
}

describe('LocalHostAgent after a restart', () => {
  it('reports the last state of each swtpm that went while no agent watched it, then its exit', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-agent-restart-'));
    dirs.push(dir);
    const [dataDir, runDir] = [join(dir, 'data'), join(dir, 'run')];
    await mkdir(runDir, { recursive: true });
    const recorded = ['a', 'b'].map((c) => c.repeat(64));
    const gone = [await leftBehind(dataDir, runDir, 'killed', recorded), await leftBehind(dataDir, runDir, 'exited')];

    const agent = await openAgent(dir, dataDir, runDir);
    try {
      // As `vtpm agent` and `vtpm serve` do: the listeners come after the agent opened.
      const reported: Array<StateChange | VtpmExit> = [];
      agent.onStateChange(async (change) => {
        reported.push(change);
      });
      agent.onExit((exit) => reported.push(exit));
      const deadline = Date.now() + 10_000;
      while (reported.filter((r) => 'code' in r).length < gone.length && Date.now() < deadline) await delay(50);

      for (const { vm, instance, ...change } of gone) {
        const mine = reported.filter((r) => r.vm === vm);
        assert.deepEqual(
          mine,
          [
            { vm, instance, ...change },
            { vm, code: null, signal: null, instance },
          ],
          'its last state, following what its agent had recorded, then its exit, as that launch',
        );
        assert.equal(existsSync(join(runDir, `${vm}.instance`)), false, 'its runtime files are gone');
        assert.equal(existsSync(join(dataDir, 'tpm', vm, 'tpm2-00.permall')), true, 'its working copy stays');
      }
      assert.deepEqual(await agent.running(), []);
    } finally {
      await agent.close();
    }
  });
});

describe('LocalHostAgent.destroy', () => {
  it("removes a vTPM's working copy, its log and the log's rotated file", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-agent-destroy-'));
    dirs.push(dir);
    const [dataDir, runDir] = [join(dir, 'data'), join(dir, 'run')];
    await mkdir(runDir, { recursive: true });
    const { vm } = await leftBehind(dataDir, runDir, 'exited');
    const agent = await openAgent(dir, dataDir, runDir);
    try {
      await mkdir(join(dataDir, 'log'), { recursive: true });
      const logs = [join(dataDir, 'log', `${vm}.log`), join(dataDir, 'log', `${vm}.log.1`)];
      for (const log of logs) await writeFile(log, 'swtpm said\n');
      await agent.destroy(vm);
      for (const path of [...logs, join(dataDir, 'tpm', vm)]) assert.equal(existsSync(path), false, `${path} is left`);
    } finally {
      await agent.close();
    }
  });
});
