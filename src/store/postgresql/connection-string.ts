/**
 * A PostgreSQL connection URI as libpq reads it, several hosts included
 * (`postgresql://user@db1:5432,db2:5432/vtpm?target_session_attrs=read-write`):
 * node-postgres takes one host, so the store tries each itself
 * (failover-pool.ts). Only the parameters the store honours are accepted; any
 * other is refused by name rather than silently ignored. The password, when
 * the URI has one, never appears in what `describe` returns.
 */
import { InvalidArgumentError } from '../../errors.js';

export interface ServerAddress {
  /** A host name, an IP address, or a directory holding the server's Unix socket. */
  host: string;
  port: number;
}

/** libpq's `target_session_attrs` values that concern a primary and its standbys. */
type TargetSessionAttrs = 'any' | 'read-write' | 'primary';

export interface PostgresTarget {
  servers: ServerAddress[];
  database: string | undefined;
  user: string | undefined;
  password: string | undefined;
  targetSessionAttrs: TargetSessionAttrs;
  connectTimeoutSeconds: number;
  applicationName: string;
  ssl: 'disable' | 'require' | 'verify-full';
}

const FIELD = '--db';
const DEFAULT_PORT = 5432;
const URI = /^(?:postgres|postgresql):\/\/(?:([^@/?]*)@)?([^/?]*)(?:\/([^?]*))?(?:\?(.*))?$/;
const SESSION_ATTRS: readonly TargetSessionAttrs[] = ['any', 'read-write', 'primary'];
const SSL_MODES = ['disable', 'require', 'verify-full'] as const;

/** Whether `value` names a PostgreSQL database (else the store is the embedded SQLite one). */
export const isPostgresUri = (value: string): boolean => /^postgres(ql)?:\/\//.test(value);

export function parsePostgresUri(uri: string): PostgresTarget {
  const match = URI.exec(uri);
  if (!match) throw new InvalidArgumentError(FIELD, 'postgresql://[user[:password]@]host[:port][,host[:port]...]/db');
  const [, userInfo, hostList = '', path, query = ''] = match;
  const params = new URLSearchParams(query);
  const known = new Set(['host', 'port', 'target_session_attrs', 'connect_timeout', 'application_name', 'sslmode']);
  for (const name of params.keys())
    if (!known.has(name))
      throw new InvalidArgumentError(`${FIELD} parameter ${name}`, `one of ${[...known].join(', ')}`);
  const [user, password] = splitUserInfo(userInfo);
  const servers = serversOf(hostList, params);
  const targetSessionAttrs = (params.get('target_session_attrs') ?? 'any') as TargetSessionAttrs;
  if (!SESSION_ATTRS.includes(targetSessionAttrs))
    throw new InvalidArgumentError(`${FIELD} target_session_attrs`, SESSION_ATTRS.join(', '), targetSessionAttrs);
  const ssl = (params.get('sslmode') ?? 'disable') as PostgresTarget['ssl'];
  if (!SSL_MODES.includes(ssl)) throw new InvalidArgumentError(`${FIELD} sslmode`, SSL_MODES.join(', '), ssl);
  const timeout = params.get('connect_timeout') ?? '5';
  if (!/^[1-9][0-9]{0,3}$/.test(timeout))
    throw new InvalidArgumentError(`${FIELD} connect_timeout`, 'seconds, 1 to 9999', timeout);
  return {
    servers,
    database: path ? decodeURIComponent(path) : undefined,
    user,
    password,
    targetSessionAttrs,
    connectTimeoutSeconds: Number(timeout),
    applicationName: params.get('application_name') ?? 'vtpm-manager',
    ssl,
  };
}

function splitUserInfo(userInfo: string | undefined): [string | undefined, string | undefined] {
  if (!userInfo) return [undefined, undefined];
  const colon = userInfo.indexOf(':');
  if (colon === -1) return [decodeURIComponent(userInfo), undefined];
  return [decodeURIComponent(userInfo.slice(0, colon)), decodeURIComponent(userInfo.slice(colon + 1))];
}

/** Hosts in the authority (`h1:p1,h2`), or in `?host=` and `?port=` lists (how Unix socket directories are given). */
function serversOf(hostList: string, params: URLSearchParams): ServerAddress[] {
  const hosts = hostList === '' ? [] : hostList.split(',').map(splitHostPort);
  for (const [index, host] of (params.get('host')?.split(',') ?? []).entries()) {
    if (host === '') throw new InvalidArgumentError(`${FIELD} host`, 'a host name or socket directory per entry');
    hosts[index] = { host, port: hosts[index]?.port };
  }
  for (const [index, port] of (params.get('port')?.split(',') ?? []).entries()) {
    hosts[index] = { host: hosts[index]?.host ?? 'localhost', port: portOf(port) };
  }
  if (hosts.length === 0) return [{ host: 'localhost', port: DEFAULT_PORT }];
  return hosts.map((server) => ({ host: server.host, port: server.port ?? DEFAULT_PORT }));
}

function splitHostPort(entry: string): { host: string; port: number | undefined } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::([0-9]+))?$/.exec(entry);
  if (!match) throw new InvalidArgumentError(`${FIELD} host`, 'host[:port] per comma-separated entry', entry);
  const [, host = '', port] = match;
  return {
    host: decodeURIComponent(host.replace(/^\[(.*)\]$/, '$1')),
    port: port === undefined ? undefined : portOf(port),
  };
}

function portOf(value: string): number {
  const port = Number(value);
  if (!/^[0-9]{1,5}$/.test(value) || port < 1 || port > 65535)
    throw new InvalidArgumentError(`${FIELD} port`, 'a TCP port, 1 to 65535', value);
  return port;
}

/** Whether the URI itself holds a password (which then sits in a unit file or a process list). */
export const uriCarriesPassword = (uri: string): boolean => parsePostgresUri(uri).password !== undefined;

/** The target as logs and errors may show it: user, servers and database, never the password. */
export function describeTarget(target: PostgresTarget): string {
  const servers = target.servers.map((s) => (s.host.startsWith('/') ? s.host : `${s.host}:${s.port}`)).join(',');
  return `PostgreSQL ${target.user ? `${target.user}@` : ''}${servers}/${target.database ?? target.user ?? ''}`;
}
