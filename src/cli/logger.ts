/**
 * The one log format of `vtpm serve` and `vtpm agent`: JSON lines on
 * standard error, ISO-8601 times, level names, one `msg` per line. Request
 * lines are at debug (see http/app.ts); info is what an operator reads.
 */
import pino, { type Logger } from 'pino';

export function processLogger(level: string, base: Record<string, string>): Logger {
  return pino(
    {
      level,
      base,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination(2),
  );
}
