import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

describe('processLogger', () => {
  it('writes JSON lines on stderr with ISO-8601 times, level names and one msg', () => {
    const logger = new URL('./logger.js', import.meta.url).href;
    const script = `const { processLogger } = await import(${JSON.stringify(logger)});
      const log = processLogger('info', { service: 'vtpm' });
      log.debug('not shown');
      log.info({ vm: 'v' }, 'started');
      log.error({ err: new Error('boom') }, 'failed');`;
    const { stderr } = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    const lines = stderr.trim().split('\n');
    assert.equal(lines.length, 2, stderr);
    const [started, failed] = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.equal(started?.level, 'info');
    assert.match(String(started?.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual([started?.service, started?.vm, started?.msg], ['vtpm', 'v', 'started']);
    assert.equal(failed?.level, 'error');
    assert.equal(lines[1]!.split('"msg"').length, 2, 'one msg key');
  });
});
