import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import pino from 'pino';
import { lazyRequestLogger } from './request-logger.js';

function capturing(level: string): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  return { logger: pino({ level }, sink), lines };
}

describe("a request's logger", () => {
  it('writes its lines with the request id, and makes no child for a level the service does not log', async () => {
    const { logger, lines } = capturing('info');
    let children = 0;
    const counted = Object.assign(Object.create(logger) as pino.Logger, {
      child: (...args: Parameters<pino.Logger['child']>) => {
        children += 1;
        return logger.child(...args);
      },
    });
    const log = lazyRequestLogger(counted, { reqId: 'req-7' }, {});
    log.debug({ route: '/v1/vtpms' }, 'request');
    assert.equal(children, 0);
    log.error({ code: 'internal' }, 'request failed');
    log.warn('again');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(children, 1, 'one child, made on the first line');
    assert.deepEqual(
      lines.map((l) => [l.reqId, l.msg]),
      [
        ['req-7', 'request failed'],
        ['req-7', 'again'],
      ],
    );
    assert.equal(log.level, 'info');
  });
});
