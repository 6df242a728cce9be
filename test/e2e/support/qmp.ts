/** Just enough of QEMU's QMP to live-migrate a guest: capabilities, migrate, query-migrate. */
import { createConnection, type Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

export class Qmp {
  private buffer = '';
  private readonly waiting: Array<(message: Record<string, unknown>) => void> = [];

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString();
      for (let end = this.buffer.indexOf('\n'); end >= 0; end = this.buffer.indexOf('\n')) {
        const message = JSON.parse(this.buffer.slice(0, end)) as Record<string, unknown>;
        this.buffer = this.buffer.slice(end + 1);
        if ('return' in message || 'error' in message || 'QMP' in message) this.waiting.shift()?.(message);
      }
    });
  }

  /** Connects (retrying while QEMU creates the socket) and leaves capabilities negotiation done. */
  static async connect(path: string): Promise<Qmp> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(socket);
        await new Promise((resolve) => qmp.waiting.push(resolve));
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (error) {
        if (attempt > 100) throw error;
        await delay(100);
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.waiting.push((message) =>
        'error' in message ? reject(new Error(`QMP ${command}: ${JSON.stringify(message.error)}`)) : resolve(message),
      );
      this.socket.write(JSON.stringify({ execute: command, ...(args && { arguments: args }) }) + '\n');
    });
  }

  /** Migrates to `uri` and resolves once QEMU reports the migration completed. */
  async migrate(uri: string): Promise<void> {
    await this.execute('migrate', { uri });
    for (;;) {
      const { return: info } = (await this.execute('query-migrate')) as {
        return: { status?: string; 'error-desc'?: string };
      };
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled')
        throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
      await delay(100);
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
