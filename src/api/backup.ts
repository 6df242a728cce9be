/** Wire shapes of the deployment's backup (`vtpm backup create`). */
import { Type } from '@sinclair/typebox';

export const BackupBody = Type.Object(
  {
    passphrase: Type.String({
      minLength: 12,
      description: 'seals the backup, which holds every secret of the deployment; keep it apart from the file',
    }),
  },
  { additionalProperties: false },
);

export const BackupTaken = Type.Object({
  backup: Type.String({ description: 'the backup file, base64' }),
  files: Type.Integer({ description: 'files of the data directory it holds' }),
});
