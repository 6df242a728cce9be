/**
 * The REST API under /v1: JSON, bearer tokens, an OpenAPI document at
 * /openapi.json generated from the same schemas that validate requests.
 * Errors always have the shape { error: { code, message, details } }.
 */
import swagger from '@fastify/swagger';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { InternalError, InvalidArgumentError, NotFoundError, UnauthenticatedError, VtpmError } from '../errors.js';
import type { Store } from '../store/index.js';
import { requestContext, type AuditLog } from '../audit/audit-log.js';
import type { AuditedKeyManager } from '../audit/audited-key-manager.js';
import { registerAgentRoutes } from './agent-routes.js';
import { registerIdentityRoutes } from './identity-routes.js';
import { enforceOnDeployment, type Principal } from '../auth/policy.js';
import { authenticate } from '../auth/tokens.js';
import type { HostScope, VtpmService } from './vtpm-service.js';

declare module 'fastify' {
  interface FastifyRequest {
    actor: Principal | null;
    /** The error code the request ended with, for the audit log. */
    failureCode: string | null;
    /** The project of the vTPM the request is about, as it was before the request. */
    vtpmProject: string | null;
  }
}

const ErrorBody = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Record(Type.String(), Type.Unknown()) }),
}, { $id: 'Error' });

const properties = (description: string) => Type.Record(Type.String(), Type.String(), { description });

const CreateBody = Type.Object({
  vm: Type.String({ description: 'UUID of the VM the vTPM belongs to' }),
  version: Type.Optional(Type.String({ description: 'TPM version: 1.2 or 2.0' })),
  model: Type.Optional(Type.String({ description: 'TPM model: tpm-tis (default) or tpm-crb (2.0 only)' })),
  flavor: Type.Optional(properties('Flavor extra specs, e.g. hw:tpm_version, hw:tpm_model')),
  image: Type.Optional(properties('Image properties, e.g. hw_tpm_version, hw_tpm_model, hw_firmware_type, os_secure_boot')),
  firmware: Type.Optional(Type.String({ description: 'bios (default) or uefi' })),
  secure_boot: Type.Optional(Type.Boolean({ description: 'UEFI secure boot with Microsoft keys enrolled' })),
  secret_security: Type.Optional(Type.String({ description: 'user (default): only this project may use the secret; deployment: a vtpm-operator may too (flavor hw:tpm_secret_security)' })),
}, { additionalProperties: false });

const UpdateBody = Type.Object({
  secure_boot: Type.Boolean({ description: 'turning it on or off resets the UEFI variable store to a fresh default' }),
}, { additionalProperties: false });

const vtpmFields = {
  vm: Type.String(),
  project: Type.String(),
  version: Type.String(),
  model: Type.String(),
  firmware: Type.String(),
  secure_boot: Type.Boolean(),
  host: Type.String(),
  status: Type.String({ description: 'creating, stopped, starting, running, migrating, stopping, deleting' }),
  secret_security: Type.String({ description: 'user or deployment' }),
  socket: Type.Union([Type.String(), Type.Null()]),
  spec_sources: Type.Unknown(),
  created_at: Type.String(),
  updated_at: Type.String(),
};
const Vtpm = Type.Object(vtpmFields, { $id: 'Vtpm' });

const AttachmentFields = {
  socket: Type.String({ description: 'unix socket of the vTPM on its host' }),
  qemu_args: Type.Array(Type.String(), { description: 'arguments to add to a QEMU command line' }),
  libvirt_xml: Type.String({ description: "libvirt <tpm> element with <backend type='external'>" }),
  libvirt_firmware_xml: Type.Union([Type.String(), Type.Null()], { description: 'UEFI guests: <loader> and <nvram> for the domain <os>' }),
};

const Started = Type.Object({ ...vtpmFields, ...AttachmentFields });
const Attachment = Type.Object(AttachmentFields);

const HOST_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$';
const HostName = Type.String({ pattern: HOST_NAME_PATTERN, description: 'a host name as its agent reports it' });

function hostScopeOf(body: unknown): HostScope {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new InvalidArgumentError('body', 'none, or an object such as {"host": "host-b"}', body);
  const { host } = body as { host?: unknown };
  if (host === undefined) return {};
  if (typeof host !== 'string' || !new RegExp(HOST_NAME_PATTERN).test(host)) throw new InvalidArgumentError('host', 'a host name as its agent reports it (letters, digits, . _ -)', host);
  return { host };
}
const MigrateBody = Type.Object({ to: HostName });
const RegisterHostBody = Type.Object({ name: HostName, url: Type.String({ description: "the host agent's API, https://HOST:PORT (http only on loopback)" }) });

const Host = Type.Object({
  name: Type.String(),
  traits: Type.Array(Type.String()),
  vtpms: Type.Integer(),
  running: Type.Integer(),
  capabilities: Type.Unknown(),
  last_seen: Type.String(),
  agent_url: Type.Union([Type.String(), Type.Null()], { description: "a remote agent's API; null for the control plane's own host" }),
});

const EkCertificates = Type.Object({
  certificates: Type.Array(Type.Object({ key_type: Type.String(), pem: Type.String() })),
});

const Generation = Type.Object({
  generation: Type.Integer(),
  kind: Type.String({ description: 'tpm (TPM permanent state) or nvram (UEFI variable store)' }),
  size: Type.Integer(),
  digest: Type.String({ description: 'SHA-256 of the stored state, hex' }),
  reason: Type.String({ description: 'create, sync, stop, restore, import or adopt' }),
  created_at: Type.String(),
});
const RestoreBody = Type.Object({ generation: Type.Integer({ minimum: 1 }) }, { additionalProperties: false });

const ExportBody = Type.Object({
  passphrase: Type.String({ minLength: 12, description: 'seals the bundle; give it to whoever imports it, separately from the file' }),
  generations: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Literal('all')], { description: 'newest generations of each kind to include (default 1)' })),
}, { additionalProperties: false });
const ImportBody = Type.Object({
  bundle: Type.String({ description: 'the bundle, base64' }),
  passphrase: Type.String(),
  vm: Type.Optional(Type.String({ description: 'import under this VM UUID instead of the exported one' })),
}, { additionalProperties: false });
const BUNDLE_LIMIT = 256 * 1024 * 1024;

const AdoptBody = Type.Object({
  vm: Type.String({ description: 'UUID of the VM the TPM belongs to' }),
  version: Type.String({ description: 'TPM version of the state: 1.2 or 2.0' }),
  model: Type.Optional(Type.String({ description: 'TPM model: tpm-tis (default) or tpm-crb (2.0 only)' })),
  source: Type.String({ minLength: 1, maxLength: 300, description: 'where the TPM comes from, recorded with the vTPM, e.g. libvirt:DOMAIN' }),
  state: Type.String({ minLength: 1, description: "the swtpm permanent-state file as the other manager left it, base64" }),
  source_secret: Type.Optional(Type.String({ minLength: 1, description: "the passphrase the other manager encrypted the state with (libvirt's secret value), base64" })),
}, { additionalProperties: false });

const VmParams = Type.Object({ vm: Type.String({ description: 'VM UUID' }) });
const DeleteQuery = Type.Object({ force: Type.Optional(Type.Boolean({ default: false })) });

export const errors = (...statuses: number[]): Record<number, TSchema> =>
  Object.fromEntries(statuses.map((status) => [status, Type.Ref(ErrorBody)]));

/** Turns a schema validation failure into the product's error, naming the field. */
function validationError(error: FastifyError): InvalidArgumentError {
  const first = error.validation?.[0];
  const missing = (first?.params as { missingProperty?: string } | undefined)?.missingProperty;
  const extra = (first?.params as { additionalProperty?: string } | undefined)?.additionalProperty;
  const path = (first?.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.');
  const field = [path, missing ?? extra].filter(Boolean).join('.') || error.validationContext || 'request';
  if (missing) return new InvalidArgumentError(field, 'a value (it is required)');
  if (extra) return new InvalidArgumentError(field, 'no such field; see /openapi.json');
  const params = (first?.params ?? {}) as { limit?: number; type?: string; allowedValues?: unknown[] };
  const expected: Record<string, string> = {
    minLength: `at least ${params.limit} characters`,
    maxLength: `at most ${params.limit} characters`,
    minimum: `a number of at least ${params.limit}`,
    type: `a value of type ${params.type}`,
    enum: `one of ${(params.allowedValues ?? []).join(', ')}`,
  };
  // The received value is not echoed: it may be a passphrase.
  return new InvalidArgumentError(field, expected[first?.keyword ?? ''] ?? `a value that satisfies: ${first?.message ?? 'the schema'}`);
}

const CREATING_ROUTES = new Set(['/v1/vtpms', '/v1/vtpms/import', '/v1/vtpms/adopt']);

/** The VM a request is about: its path's, or a create's body's; only a well-formed UUID, never arbitrary input. */
function vmOf(request: FastifyRequest): string | undefined {
  const candidate = (request.params as { vm?: unknown } | undefined)?.vm ?? (request.body as { vm?: unknown } | undefined)?.vm;
  return typeof candidate === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(candidate) ? candidate.toLowerCase() : undefined;
}

export function actorOf(request: FastifyRequest): Principal {
  if (!request.actor) throw new UnauthenticatedError();
  return request.actor;
}

export async function buildApi(options: { service: VtpmService; store: Store; keys: AuditedKeyManager; audit: AuditLog; logger: Logger; version: string; https?: { cert: Buffer; key: Buffer } | undefined }): Promise<FastifyInstance> {
  const { service, store, audit } = options;
  const app = Fastify({ loggerInstance: options.logger as FastifyBaseLogger, bodyLimit: 1024 * 1024, ...(options.https && { https: options.https }) }) as unknown as FastifyInstance;

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'vtpm-manager', version: options.version, description: 'Virtual TPMs for virtual machine fleets' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  app.addSchema(ErrorBody);
  app.addSchema(Vtpm);

  app.decorateRequest('actor', null);
  app.decorateRequest('failureCode', null);
  app.decorateRequest('vtpmProject', null);
  app.addHook('onRequest', async (request) => {
    if (!request.url.startsWith('/v1/')) return;
    const header = request.headers.authorization ?? '';
    const token = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
    const actor = token ? await authenticate(store, token) : undefined;
    if (!actor) throw new UnauthenticatedError('missing, unknown, expired or revoked API token: pass --token, set VTPM_TOKEN, or point --data-dir at the server\'s data directory');
    request.actor = actor;
  });
  // Code below the API (the audited key manager) learns whom it works for, and on which vTPM.
  app.addHook('preHandler', (request, _reply, done) => {
    const principal = request.actor;
    if (!principal) return done();
    const vm = vmOf(request);
    const withContext = (project: string | undefined) => {
      request.vtpmProject = project ?? null;
      requestContext.run({ principal, vm, project }, done);
    };
    if (vm === undefined) return withContext(undefined);
    // A vTPM that does not exist yet is being created, in the caller's project.
    const creating = CREATING_ROUTES.has(request.routeOptions.url ?? '');
    store.getVtpm(vm).then((record) => withContext(record?.project ?? (creating ? principal.project : undefined)), () => withContext(undefined));
  });
  // Every state-changing request, allowed or not, authenticated or not; never bodies, which may carry passphrases or state.
  // Recorded before the answer leaves: nothing acknowledged goes unrecorded.
  app.addHook('onSend', async (request, reply, payload) => {
    if (request.method === 'GET' || !request.url.startsWith('/v1/')) return payload;
    const params = (request.params ?? {}) as Record<string, string | undefined>;
    const vm = vmOf(request);
    // A create's vTPM exists only afterwards.
    const project = request.vtpmProject ?? (vm === undefined ? undefined : (await store.getVtpm(vm).catch(() => undefined))?.project);
    const result = request.failureCode ?? (reply.statusCode < 400 ? 'ok' : `http_${reply.statusCode}`);
    const actor = request.actor ?? { name: '(no valid token)', project: '-' };
    await audit.record({
      operation: `${request.method} ${request.routeOptions.url ?? request.url.split('?')[0]}`,
      vm,
      project,
      result,
      detail: { status: reply.statusCode, ...(params.name !== undefined && { user: params.name }), ...(params.id !== undefined && { token: params.id }) },
    }, actor);
    return payload;
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    let failure: VtpmError;
    if (error instanceof VtpmError) failure = error;
    else if (error.validation) failure = validationError(error);
    else if (error.statusCode && error.statusCode < 500) failure = new InvalidArgumentError('request', 'a well-formed request', error.message);
    else {
      request.log.error({ err: error }, 'unexpected error');
      failure = new InternalError();
    }
    if (failure.status >= 500) request.log.error({ code: failure.code, msg: failure.message }, 'request failed');
    request.failureCode = failure.code;
    void reply.status(failure.status).send({ error: failure.toJSON() });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: new NotFoundError('route', `${request.method} ${request.url}`).toJSON() });
  });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));

  app.get('/v1/vtpms', {
    schema: { summary: 'List vTPMs', tags: ['vtpms'], response: { 200: Type.Object({ vtpms: Type.Array(Type.Ref(Vtpm)) }), ...errors(401) } },
  }, async (request) => ({ vtpms: await service.list(actorOf(request)) }));

  app.post<{ Body: Static<typeof CreateBody> }>('/v1/vtpms', {
    schema: {
      summary: 'Create a vTPM for a VM: resolve the spec, place it, manufacture it',
      tags: ['vtpms'],
      body: CreateBody,
      response: { 201: Type.Ref(Vtpm), ...errors(400, 401, 409, 500) },
    },
  }, async (request, reply) => {
    const { secure_boot: secureBoot, secret_security: secretSecurity, ...rest } = request.body;
    const created = await service.create({ ...rest, secureBoot, secretSecurity }, actorOf(request));
    return reply.status(201).send(created);
  });

  app.get<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm', {
    schema: { summary: 'Show a vTPM', tags: ['vtpms'], params: VmParams, response: { 200: Type.Ref(Vtpm), ...errors(400, 401, 403, 404) } },
  }, async (request) => service.show(request.params.vm, actorOf(request)));

  app.patch<{ Params: Static<typeof VmParams>; Body: Static<typeof UpdateBody> }>('/v1/vtpms/:vm', {
    schema: {
      summary: 'Change secure boot of a stopped UEFI guest; its variable store starts afresh',
      tags: ['vtpms'],
      params: VmParams,
      body: UpdateBody,
      response: { 200: Type.Ref(Vtpm), ...errors(400, 401, 403, 404, 409) },
    },
  }, async (request) => service.setSecureBoot(request.params.vm, request.body.secure_boot, actorOf(request)));

  app.delete<{ Params: Static<typeof VmParams>; Querystring: Static<typeof DeleteQuery> }>('/v1/vtpms/:vm', {
    schema: {
      summary: 'Delete a vTPM: its secret is destroyed first (crypto-erase), then its state',
      tags: ['vtpms'],
      params: VmParams,
      querystring: DeleteQuery,
      response: { 204: Type.Null(), ...errors(400, 401, 403, 404, 409) },
    },
  }, async (request, reply) => {
    await service.delete(request.params.vm, { force: request.query.force ?? false }, actorOf(request));
    return reply.status(204).send();
  });

  // The body is optional (a plain start has none), which a body schema cannot say: hostScopeOf checks it.
  app.post<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm/start', {
    schema: {
      summary: 'Start the vTPM; an optional body {"host": NAME} starts it on that host (a stopped vTPM may change hosts). Returns the socket and how to attach QEMU or libvirt to it',
      tags: ['vtpms'],
      params: VmParams,
      response: { 200: Started, ...errors(400, 401, 403, 404, 409, 500) },
    },
  }, async (request) => service.start(request.params.vm, actorOf(request), hostScopeOf(request.body)));

  app.post<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm/stop', {
    schema: {
      summary: 'Stop the vTPM; an optional body {"host": NAME} stops it only if it runs there', tags: ['vtpms'], params: VmParams, response: { 200: Type.Ref(Vtpm), ...errors(400, 401, 403, 404, 409) },
    },
  }, async (request) => service.stop(request.params.vm, actorOf(request), hostScopeOf(request.body)));

  app.post<{ Params: Static<typeof VmParams>; Body: Static<typeof MigrateBody> }>('/v1/vtpms/:vm/migrate', {
    schema: {
      summary: "Prepare a live migration of a running vTPM to another host: the destination's swtpm starts for the incoming QEMU; the migration completes when the source's swtpm exits",
      tags: ['vtpms'],
      params: VmParams,
      body: MigrateBody,
      response: { 200: Type.Object({ ...vtpmFields, ...AttachmentFields, from: Type.String(), to: Type.String() }), ...errors(400, 401, 403, 404, 409, 500) },
    },
  }, async (request) => service.migrate(request.params.vm, request.body.to, actorOf(request)));

  app.get<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm/attachment', {
    schema: {
      summary: 'QEMU arguments and libvirt XML for the vTPM (valid once it is started)',
      tags: ['vtpms'],
      params: VmParams,
      response: { 200: Attachment, ...errors(400, 401, 403, 404) },
    },
  }, async (request) => service.attachmentOf(request.params.vm, actorOf(request)));

  app.get<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm/ek', {
    schema: { summary: 'EK certificates (PEM)', tags: ['vtpms'], params: VmParams, response: { 200: EkCertificates, ...errors(400, 401, 403, 404, 409) } },
  }, async (request) => ({ certificates: await service.ekCertificates(request.params.vm, actorOf(request)) }));

  app.get<{ Params: Static<typeof VmParams> }>('/v1/vtpms/:vm/generations', {
    schema: {
      summary: 'State generations in the vault, newest first',
      tags: ['vault'],
      params: VmParams,
      response: { 200: Type.Object({ generations: Type.Array(Generation) }), ...errors(400, 401, 403, 404) },
    },
  }, async (request) => ({ generations: await service.history(request.params.vm, actorOf(request)) }));

  app.post<{ Params: Static<typeof VmParams>; Body: Static<typeof RestoreBody> }>('/v1/vtpms/:vm/restore', {
    schema: {
      summary: 'Make an older generation the newest again (stopped vTPMs only; nothing is deleted)',
      tags: ['vault'],
      params: VmParams,
      body: RestoreBody,
      response: { 200: Type.Object({ ...vtpmFields, generation: Type.Integer() }), ...errors(400, 401, 403, 404, 409, 500) },
    },
  }, async (request) => service.restore(request.params.vm, request.body.generation, actorOf(request)));

  app.post<{ Params: Static<typeof VmParams>; Body: Static<typeof ExportBody> }>('/v1/vtpms/:vm/export', {
    schema: {
      summary: 'Export the vTPM as a passphrase-sealed bundle',
      tags: ['vault'],
      params: VmParams,
      body: ExportBody,
      response: { 200: Type.Object({ bundle: Type.String({ description: 'base64' }) }), ...errors(400, 401, 403, 404, 409, 500) },
    },
  }, async (request) => {
    const bundle = await service.exportBundle(request.params.vm, { passphrase: request.body.passphrase, generations: request.body.generations ?? 1 }, actorOf(request));
    return { bundle: bundle.toString('base64') };
  });

  app.post<{ Body: Static<typeof ImportBody> }>('/v1/vtpms/import', {
    bodyLimit: BUNDLE_LIMIT,
    schema: {
      summary: 'Import an exported vTPM; all or nothing',
      tags: ['vault'],
      body: ImportBody,
      response: { 201: Type.Ref(Vtpm), ...errors(400, 401, 409, 500) },
    },
  }, async (request, reply) => {
    const imported = await service.importBundle(Buffer.from(request.body.bundle, 'base64'), { passphrase: request.body.passphrase, vm: request.body.vm }, actorOf(request));
    return reply.status(201).send(imported);
  });

  app.post<{ Body: Static<typeof AdoptBody> }>('/v1/vtpms/adopt', {
    schema: {
      summary: "Take over a TPM another manager created (libvirt's swtpm state): same EK, NV contents and PCR banks, re-encrypted under a new secret",
      tags: ['vtpms'],
      body: AdoptBody,
      response: { 201: Type.Ref(Vtpm), ...errors(400, 401, 409, 500) },
    },
  }, async (request, reply) => {
    const { vm, version, model, source, state, source_secret: secret } = request.body;
    const adopted = await service.adopt({
      vm, version, source, ...(model !== undefined && { model }),
      state: Buffer.from(state, 'base64'), sourcePassphrase: secret === undefined ? undefined : Buffer.from(secret, 'base64'),
    }, actorOf(request));
    return reply.status(201).send(adopted);
  });

  app.get('/v1/pool', {
    schema: {
      summary: 'TPMs manufactured ahead of demand, per version',
      tags: ['hosts'],
      response: { 200: Type.Object({ size: Type.Integer(), refill_pause_ms: Type.Integer(), ready: Type.Record(Type.String(), Type.Integer()) }), ...errors(401, 403) },
    },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'pool');
    return service.poolStatus();
  });

  app.get('/v1/hosts', {
    schema: { summary: 'Hosts, their traits and load', tags: ['hosts'], response: { 200: Type.Object({ hosts: Type.Array(Host) }), ...errors(401, 403) } },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'hosts');
    return { hosts: await service.hosts() };
  });

  app.post<{ Body: Static<typeof RegisterHostBody> }>('/v1/hosts', {
    schema: {
      summary: "Register a host whose agent runs remotely (`vtpm agent`); returns the agent's token, once",
      tags: ['hosts'],
      body: RegisterHostBody,
      response: { 201: Type.Object({ name: Type.String(), url: Type.String(), token: Type.String() }), ...errors(400, 401, 403, 409) },
    },
  }, async (request, reply) => {
    enforceOnDeployment(actorOf(request), 'hosts-register');
    return reply.status(201).send(await service.registerRemoteHost(request.body.name, request.body.url));
  });

  registerAgentRoutes(app, service);
  registerIdentityRoutes(app, { store, keys: options.keys, audit, actorOf, errors });
  return app;
}
