/** /v1/vtpms/...: the vault's side of a vTPM: its generations, restore, export and import. */
import type { Static } from '@sinclair/typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { errorResponses as errors } from '../../api/errors.js';
import {
  ExportBody,
  Exported,
  Generations,
  ImportBody,
  RestoreBody,
  Restored,
  VmParams,
  Vtpm,
} from '../../api/vtpms.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { exportVtpm } from '../../orchestration/export.js';
import { importVtpm } from '../../orchestration/import.js';
import { generationHistory } from '../../orchestration/inspect.js';
import { restoreGeneration } from '../../orchestration/restore.js';
import { actorOf } from './plugin.js';

/**
 * A bundle of every generation the vault keeps (20 of the TPM state, about 10 KiB each, and 20 of a UEFI
 * variable store, about 540 KiB each) is about 15 MiB as base64: twice that bounds what one import may make
 * the service parse and hold.
 */
const BUNDLE_LIMIT = 32 * 1024 * 1024;
type ByVm = { Params: Static<typeof VmParams> };

export function registerVaultRoutes(app: FastifyInstance, cp: ControlPlane): void {
  app.get<ByVm>(
    '/vtpms/:vm/generations',
    {
      schema: {
        summary: 'State generations in the vault, newest first',
        tags: ['vault'],
        params: VmParams,
        response: { 200: Generations, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => ({ generations: await generationHistory(cp, request.params.vm, actorOf(request)) }),
  );

  app.post<ByVm & { Body: Static<typeof RestoreBody> }>(
    '/vtpms/:vm/restore',
    {
      schema: {
        summary: 'Make an older generation the newest again (stopped vTPMs only; nothing is deleted)',
        tags: ['vault'],
        params: VmParams,
        body: RestoreBody,
        response: { 200: Restored, ...errors(400, 401, 403, 404, 409, 500) },
      },
    },
    async (request) => restoreGeneration(cp, request.params.vm, request.body.generation, actorOf(request)),
  );

  app.post<ByVm & { Body: Static<typeof ExportBody> }>(
    '/vtpms/:vm/export',
    {
      schema: {
        summary: 'Export the vTPM as a passphrase-sealed bundle',
        tags: ['vault'],
        params: VmParams,
        body: ExportBody,
        response: { 200: Exported, ...errors(400, 401, 403, 404, 409, 500) },
      },
    },
    async (request) => {
      const { passphrase, generations } = request.body;
      const bundle = await exportVtpm(
        cp,
        request.params.vm,
        { passphrase, generations: generations ?? 1 },
        actorOf(request),
      );
      return { bundle: bundle.toString('base64') };
    },
  );

  app.post<{ Body: Static<typeof ImportBody> }>(
    '/vtpms/import',
    {
      bodyLimit: BUNDLE_LIMIT,
      schema: {
        summary: 'Import an exported vTPM; all or nothing',
        tags: ['vault'],
        body: ImportBody,
        response: { 201: Type.Ref(Vtpm), ...errors(400, 401, 409, 500) },
      },
    },
    async (request, reply) => {
      const { bundle, passphrase, vm, original } = request.body;
      const imported = await importVtpm(
        cp,
        { bundle: Buffer.from(bundle, 'base64'), passphrase, vm, original },
        actorOf(request),
      );
      return reply.status(201).send(imported);
    },
  );
}
