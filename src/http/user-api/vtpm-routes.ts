/** /v1/vtpms: create, inspect, start, stop, migrate, adopt, delete. */
import type { Static } from '@sinclair/typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { errorResponses as errors } from '../../api/errors.js';
import { isHostName } from '../../api/patterns.js';
import {
  AdoptBody,
  Attachment,
  CreateBody,
  DeleteQuery,
  EkCertificates,
  MigrateBody,
  Migration,
  Started,
  Stopped,
  UpdateBody,
  VmParams,
  Vtpm,
  VtpmList,
} from '../../api/vtpms.js';
import { InvalidArgumentError } from '../../errors.js';
import { adoptVtpm } from '../../orchestration/adopt.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { createVtpm } from '../../orchestration/create.js';
import { deleteVtpm } from '../../orchestration/delete.js';
import { ekCertificates, listVtpms, showVtpm, vtpmAttachment } from '../../orchestration/inspect.js';
import { migrateVtpm } from '../../orchestration/migrate.js';
import { setSecureBoot } from '../../orchestration/secure-boot.js';
import { type HostScope, startVtpm } from '../../orchestration/start.js';
import { stopVtpm } from '../../orchestration/stop.js';
import { actorOf } from './plugin.js';

type ByVm = { Params: Static<typeof VmParams> };

/** The optional body of start and stop: a body schema cannot say "none, or this object", so it is checked here. */
function hostScopeOf(body: unknown): HostScope {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidArgumentError('body', 'none, or an object such as {"host": "host-b"}', body);
  }
  const { host } = body as { host?: unknown };
  if (host === undefined) return {};
  if (typeof host !== 'string' || !isHostName(host)) {
    throw new InvalidArgumentError('host', 'a host name as its agent reports it (letters, digits, . _ -)', host);
  }
  return { host };
}

export function registerVtpmRoutes(app: FastifyInstance, cp: ControlPlane): void {
  const vtpm = Type.Ref(Vtpm);

  app.get(
    '/vtpms',
    { schema: { summary: 'List vTPMs', tags: ['vtpms'], response: { 200: VtpmList, ...errors(401) } } },
    async (request) => ({ vtpms: await listVtpms(cp, actorOf(request)) }),
  );

  app.post<{ Body: Static<typeof CreateBody> }>(
    '/vtpms',
    {
      schema: {
        summary: 'Create a vTPM for a VM: resolve the spec, place it, manufacture it',
        tags: ['vtpms'],
        body: CreateBody,
        response: { 201: vtpm, ...errors(400, 401, 409, 500) },
      },
    },
    async (request, reply) => {
      const { secure_boot: secureBoot, secret_security: secretSecurity, ...rest } = request.body;
      const created = await createVtpm(cp, { ...rest, secureBoot, secretSecurity }, actorOf(request));
      return reply.status(201).send(created);
    },
  );

  app.get<ByVm>(
    '/vtpms/:vm',
    {
      schema: {
        summary: 'Show a vTPM',
        tags: ['vtpms'],
        params: VmParams,
        response: { 200: vtpm, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => showVtpm(cp, request.params.vm, actorOf(request)),
  );

  app.patch<ByVm & { Body: Static<typeof UpdateBody> }>(
    '/vtpms/:vm',
    {
      schema: {
        summary: 'Change secure boot of a stopped UEFI guest; its variable store starts afresh',
        tags: ['vtpms'],
        params: VmParams,
        body: UpdateBody,
        response: { 200: vtpm, ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request) => setSecureBoot(cp, request.params.vm, request.body.secure_boot, actorOf(request)),
  );

  app.delete<ByVm & { Querystring: Static<typeof DeleteQuery> }>(
    '/vtpms/:vm',
    {
      schema: {
        summary: 'Delete a vTPM: its secret is destroyed first (crypto-erase), then its state',
        tags: ['vtpms'],
        params: VmParams,
        querystring: DeleteQuery,
        response: { 204: Type.Null(), ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request, reply) => {
      const { force = false, dry_run: dryRun = false } = request.query;
      await deleteVtpm(cp, request.params.vm, { force, dryRun }, actorOf(request));
      return reply.status(204).send();
    },
  );

  app.post<ByVm>(
    '/vtpms/:vm/start',
    {
      schema: {
        summary:
          'Start the vTPM; an optional body {"host": NAME} starts it on that host (a stopped vTPM may change hosts). ' +
          'Returns the socket and how to attach QEMU or libvirt to it. A vTPM already running there is answered as ' +
          'it is, with unchanged: true; a stop of a stopped one likewise',
        tags: ['vtpms'],
        params: VmParams,
        response: { 200: Started, ...errors(400, 401, 403, 404, 409, 500) },
      },
    },
    async (request) => startVtpm(cp, request.params.vm, actorOf(request), hostScopeOf(request.body)),
  );

  app.post<ByVm>(
    '/vtpms/:vm/stop',
    {
      schema: {
        summary: 'Stop the vTPM; an optional body {"host": NAME} stops it only if it runs there',
        tags: ['vtpms'],
        params: VmParams,
        response: { 200: Stopped, ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request) => stopVtpm(cp, request.params.vm, actorOf(request), hostScopeOf(request.body)),
  );

  app.post<ByVm & { Body: Static<typeof MigrateBody> }>(
    '/vtpms/:vm/migrate',
    {
      schema: {
        summary:
          "Prepare a live migration of a running vTPM to another host: the destination's swtpm starts for the " +
          "incoming QEMU; the migration completes when the source's swtpm exits",
        tags: ['vtpms'],
        params: VmParams,
        body: MigrateBody,
        response: { 200: Migration, ...errors(400, 401, 403, 404, 409, 500) },
      },
    },
    async (request) => migrateVtpm(cp, request.params.vm, request.body.to, actorOf(request)),
  );

  app.get<ByVm>(
    '/vtpms/:vm/attachment',
    {
      schema: {
        summary: 'QEMU arguments and libvirt XML for the vTPM (valid once it is started)',
        tags: ['vtpms'],
        params: VmParams,
        response: { 200: Attachment, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => vtpmAttachment(cp, request.params.vm, actorOf(request)),
  );

  app.get<ByVm>(
    '/vtpms/:vm/ek',
    {
      schema: {
        summary: 'EK certificates (PEM)',
        tags: ['vtpms'],
        params: VmParams,
        response: { 200: EkCertificates, ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request) => ({ certificates: await ekCertificates(cp, request.params.vm, actorOf(request)) }),
  );

  app.post<{ Body: Static<typeof AdoptBody> }>(
    '/vtpms/adopt',
    {
      schema: {
        summary:
          "Take over a TPM another manager created (libvirt's swtpm state): same EK, NV contents and PCR banks, " +
          're-encrypted under a new secret',
        tags: ['vtpms'],
        body: AdoptBody,
        response: { 201: vtpm, ...errors(400, 401, 409, 500) },
      },
    },
    async (request, reply) => {
      const { vm, version, model, source, state, source_secret: secret } = request.body;
      const adopted = await adoptVtpm(
        cp,
        {
          vm,
          version,
          source,
          ...(model !== undefined && { model }),
          state: Buffer.from(state, 'base64'),
          sourcePassphrase: secret === undefined ? undefined : Buffer.from(secret, 'base64'),
        },
        actorOf(request),
      );
      return reply.status(201).send(adopted);
    },
  );
}
