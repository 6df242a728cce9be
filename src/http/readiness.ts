/**
 * `/readyz`: whether this replica can serve requests now, meaning its
 * database and its key manager answer. `/healthz` only says the process is
 * alive. A load balancer or an orchestrator probes them without a token.
 * Each check has a deadline, and probes that arrive together share one
 * round of checks, so no rate of probes can pile up work behind a key
 * manager that hangs.
 */
import type { FastifyInstance } from 'fastify';
import { NotReadyError } from '../errors.js';
import type { ControlPlane } from '../orchestration/control-plane.js';

const CHECK_DEADLINE_MS = 2_000;

type Outcome = 'ok' | string;

async function outcomeOf(check: () => Promise<void>): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_DEADLINE_MS} ms`)), CHECK_DEADLINE_MS);
  });
  try {
    await Promise.race([check(), deadline]);
    return 'ok';
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    clearTimeout(timer);
  }
}

export function serveReadiness(app: FastifyInstance, cp: ControlPlane): void {
  let round: Promise<Record<string, Outcome>> | undefined;
  const checkAll = async () => {
    const [database, keyManager] = await Promise.all([
      outcomeOf(() => cp.store.checkReachable()),
      outcomeOf(() => cp.keys.checkReachable()),
    ]);
    return { database, key_manager: keyManager };
  };
  app.get('/readyz', { schema: { hide: true } }, async () => {
    round ??= checkAll().finally(() => (round = undefined));
    const checks = await round;
    if (Object.values(checks).some((outcome) => outcome !== 'ok'))
      throw new NotReadyError('not ready: the database or the key manager does not answer', { checks });
    return { status: 'ready', checks };
  });
}
