/**
 * What every HTTP server of the product (vtpm serve's API, vtpm agent's)
 * is built with, so that each answers bad input, logs and validates alike.
 */
import { type FastifyBaseLogger, type FastifyServerOptions, LogController } from 'fastify';
import type { Logger } from 'pino';
import { handleClientError, handleFrameworkError } from './error-handler.js';
import { requestIdOf } from './request-id.js';
import { lazyRequestLogger } from './request-logger.js';

export function productServerOptions(logger: Logger, bodyLimit: number): FastifyServerOptions {
  return {
    loggerInstance: logger as FastifyBaseLogger,
    // fastify's two lines per request at info drown what operators need (vtpm serve logs one, at debug).
    logController: new LogController({ disableRequestLogging: true }),
    childLoggerFactory: lazyRequestLogger,
    genReqId: requestIdOf,
    bodyLimit,
    frameworkErrors: handleFrameworkError,
    clientErrorHandler: handleClientError,
    // A field the schema does not have is refused ("no such field"), not dropped in silence: a misspelt
    // `secure_bot: true` would create a vTPM without secure boot. (fastify's default removes it.)
    ajv: { customOptions: { removeAdditional: false } },
  };
}
