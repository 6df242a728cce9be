import { join } from 'node:path';

/**
 * Where a single-machine deployment keeps its admin token (0600), so that the CLI there finds it without configuration.
 */
export const adminTokenPath = (dataDir: string): string => join(dataDir, 'admin.token');
