/** Human-readable rendering; --json bypasses all of this. */
import type { Attachment, VtpmView } from '../api/vtpms.js';

export function table(rows: Array<Record<string, string | number>>, columns: string[]): string {
  if (rows.length === 0) return '(none)';
  const widths = columns.map((column) =>
    Math.max(column.length, ...rows.map((row) => String(row[column] ?? '').length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [
    line(columns.map((c) => c.toUpperCase())),
    ...rows.map((row) => line(columns.map((c) => String(row[c] ?? '')))),
  ].join('\n');
}

export function fields(record: Record<string, unknown>, keys: string[]): string {
  const width = Math.max(...keys.map((k) => k.length));
  return keys
    .filter((key) => record[key] !== undefined)
    .map((key) => {
      const value = record[key];
      const shown = value === null ? '-' : typeof value === 'object' ? JSON.stringify(value) : String(value);
      return `${key.padEnd(width)}  ${shown}`;
    })
    .join('\n');
}

/** Quotes an argument for a POSIX shell only when it needs it. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

export const showVtpm = (vtpm: VtpmView) =>
  fields(vtpm as unknown as Record<string, unknown>, [
    'vm',
    'version',
    'model',
    'firmware',
    'secure_boot',
    'host',
    'status',
    'socket',
    'project',
    'secret_security',
    'created_at',
    'updated_at',
  ]);
export const showAttachment = (attachment: Attachment) =>
  [
    `socket       ${attachment.socket}`,
    `qemu args    ${attachment.qemu_args.map(shellQuote).join(' ')}`,
    'libvirt xml',
    attachment.libvirt_xml,
    ...(attachment.libvirt_firmware_xml ? ['libvirt firmware xml (in <os>)', attachment.libvirt_firmware_xml] : []),
  ].join('\n');
