/** /v1/backup: a consistent backup of the running deployment, for `vtpm backup create` (admin). */
import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { BackupBody, BackupTaken } from '../../api/backup.js';
import { errorResponses as errors } from '../../api/errors.js';
import { backupDeployment } from '../../backup/take-backup.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { actorOf } from './plugin.js';

export function registerBackupRoutes(app: FastifyInstance, cp: ControlPlane): void {
  app.post<{ Body: Static<typeof BackupBody> }>(
    '/backup',
    {
      schema: {
        summary: "Back up the deployment (database, the key manager's files, CA), sealed with a passphrase",
        tags: ['deployment'],
        body: BackupBody,
        response: { 200: BackupTaken, ...errors(400, 401, 403, 500) },
      },
    },
    async (request) => {
      const { backup, files } = await backupDeployment(cp, request.body.passphrase, actorOf(request));
      return { backup: backup.toString('base64'), files };
    },
  );
}
