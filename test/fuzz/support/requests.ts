/**
 * Requests generated for one operation, sent as raw bytes (a client library
 * would refuse, fix or re-encode much of what is worth sending), and what
 * every answer must be: below 500, in the product's error shape when it is
 * an error, and in time.
 */
import { Agent, request as httpRequest } from 'node:http';
import fc from 'fast-check';
import { hostileJson, hostileString, nested } from './hostile.js';
import type { Operation } from './routes.js';
import { conforming, mutated, type SchemaContext } from './schema.js';
import { fuzz } from './settings.js';

/** Who a request claims to be; resolved to a token when it is sent (tokens are replaced when the fuzz revokes them). */
export type Credential = 'none' | 'admin' | 'member' | 'agent' | { garbage: string };

export interface FuzzRequest {
  method: string;
  path: string;
  credential: Credential;
  contentType: string | undefined;
  body: Buffer | undefined;
  /** How the body was made, to read a counterexample by. */
  bodyKind: string;
}

export interface Answer {
  status: number;
  contentType: string;
  text: string;
  ms: number;
}

/**
 * A request that takes longer than this has stalled the service. The slowest one a fuzz can make valid,
 * manufacturing a TPM 2.0 (RSA and ECC keys, EK certificates), takes about 3 s on two idle cores; the
 * suite shares its machine.
 */
export const DEADLINE_MS = 10_000;

const OTHER_METHODS = ['PUT', 'OPTIONS', 'TRACE', 'PROPFIND', 'SEARCH', 'PATCH', 'DELETE', 'POST', 'GET'];

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** As a client should encode it; a lone surrogate (which has no UTF-8) becomes U+FFFD, as WHATWG URLs do. */
function safeEncode(value: string): string {
  return encodeURIComponent(value.replace(new RegExp(LONE_SURROGATE, 'g'), '\uFFFD'));
}

/** The three bytes a UTF-16 surrogate would have in UTF-8 if it had any: what a careless encoder sends. */
function surrogateBytes(unit: number): string {
  const hex = (byte: number) => byte.toString(16).toUpperCase();
  return `%ED%${hex(0xa0 | ((unit >> 6) & 0x1f))}%${hex(0x80 | (unit & 0x3f))}`;
}

/** Traversal and reserved characters kept as they are; a lone surrogate as the invalid UTF-8 of its code unit. */
function rawEncode(value: string): string {
  return [...value]
    .map((c) =>
      /^[A-Za-z0-9._~!$&'()*+,;=:@/%?#-]$/.test(c)
        ? c
        : LONE_SURROGATE.test(c)
          ? surrogateBytes(c.charCodeAt(0))
          : encodeURIComponent(c),
    )
    .join('');
}

/** Encodes a path or query value three ways: as a client should, raw (traversal kept), and twice. */
function encodings(value: string): fc.Arbitrary<string> {
  return fc.oneof(
    { arbitrary: fc.constant(safeEncode(value)), weight: 5 },
    { arbitrary: fc.constant(rawEncode(value)), weight: 2 },
    { arbitrary: fc.constant(safeEncode(safeEncode(value))), weight: 1 },
  );
}

const RAW_QUERIES = [
  '?%ff=%fe',
  '?=&&=&',
  '?a[b][c]=1&a[b]=2',
  '?__proto__[admin]=1',
  '?constructor[prototype][admin]=1',
  `?x=${'A'.repeat(6000)}`,
  '?%00=%00',
  '?vm=..%2f..%2f&vm=%2e%2e',
  '?limit=1e309&limit=-1',
  '?force=yes&force=no',
  '#fragment',
  '?&',
];

function queryOf(operation: Operation, context: SchemaContext): fc.Arbitrary<string> {
  const declared = operation.parameters.filter((p) => p.in === 'query');
  const pair = (name: string, value: fc.Arbitrary<unknown>) =>
    fc
      .tuple(
        value.map((v) => (typeof v === 'string' ? v : (JSON.stringify(v) ?? 'undefined'))),
        fc.constantFrom(name, safeEncode(name)),
      )
      .chain(([v, key]) => encodings(v).map((encoded) => `${key}=${encoded}`));
  const declaredPairs = declared.map((p) =>
    fc.option(pair(p.name, fc.oneof(conforming(p.schema, context), mutated(p.schema, context))), { freq: 2 }),
  );
  const unknown = fc.option(pair('unknown', hostileString(context.known)), { freq: 4 });
  const generated = fc
    .tuple(
      fc.tuple(...declaredPairs),
      unknown,
      declared.length === 0
        ? fc.constant([])
        : fc.array(fc.constantFrom(...declared.map((p) => p.name)), { maxLength: 2 }),
    )
    .chain(([pairs, extra, repeated]) =>
      fc
        .tuple(...repeated.map((name) => pair(name, hostileString(context.known))))
        .map((again) => [...pairs, extra, ...again].filter((p): p is string => p !== null)),
    )
    .map((pairs) => (pairs.length === 0 ? '' : `?${pairs.join('&')}`));
  return fc.oneof({ arbitrary: generated, weight: 6 }, { arbitrary: fc.constantFrom(...RAW_QUERIES), weight: 1 });
}

function pathOf(operation: Operation, context: SchemaContext): fc.Arbitrary<string> {
  const names = [...operation.path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]!);
  const values = names.map((name) => {
    const parameter = operation.parameters.find((p) => p.in === 'path' && p.name === name);
    const schema = parameter?.schema ?? { type: 'string' };
    const value = fc.oneof(
      { arbitrary: conforming(schema, context), weight: 3 },
      { arbitrary: mutated(schema, context), weight: 2 },
      { arbitrary: hostileString(context.known), weight: 4 },
    );
    return value.map((v) => (typeof v === 'string' ? v : (JSON.stringify(v) ?? ''))).chain(encodings);
  });
  return fc
    .tuple(...values)
    .map((encoded) => names.reduce((path, name, i) => path.replace(`{${name}}`, encoded[i]!), operation.path));
}

const JSON_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON'];
const OTHER_TYPES = [
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/octet-stream',
  'application/json; charset=latin1',
  'application/json-patch+json',
  'application/merge-patch+json',
  'application/xml',
  'application/jsonx',
  ';',
  '',
  'application/json\u00ff',
  '*/*',
];

/** Bodies that are not JSON, or are JSON no sane parser should have to read. */
const RAW_BODIES: Array<[string, Buffer]> = [
  ['empty', Buffer.alloc(0)],
  ['truncated', Buffer.from('{"vm": "')],
  ['trailing garbage', Buffer.from('{} {}')],
  ['single quotes', Buffer.from("{'vm': 'x'}")],
  ['NaN', Buffer.from('{"generation": NaN}')],
  ['comment', Buffer.from('{/* */}')],
  ['bare string', Buffer.from('"just a string"')],
  ['null', Buffer.from('null')],
  ['number', Buffer.from('12345678901234567890123456789')],
  ['duplicate keys', Buffer.from('{"vm":"a","vm":{"x":1}}')],
  ['proto key', Buffer.from('{"__proto__":{"admin":true},"constructor":{"prototype":{"x":1}}}')],
  ['BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{}')])],
  ['UTF-16', Buffer.from('{"vm":"x"}', 'utf16le')],
  [
    'invalid UTF-8 in a string',
    Buffer.concat([Buffer.from('{"vm":"'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}')]),
  ],
  [
    'overlong UTF-8',
    Buffer.concat([Buffer.from('{"vm":"'), Buffer.from([0xc0, 0xaf, 0xe0, 0x80, 0xaf]), Buffer.from('"}')]),
  ],
  ['surrogate in UTF-8', Buffer.concat([Buffer.from('{"vm":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')])],
  ['escaped lone surrogate', Buffer.from('{"vm":"\\ud800","passphrase":"\\udfff\\u0000"}')],
  ['NUL bytes', Buffer.from('{"vm":"a\u0000b"}\u0000\u0000')],
  ['deep arrays', Buffer.from('['.repeat(100_000) + ']'.repeat(100_000))],
  ['deep objects', Buffer.from('{"a":'.repeat(50_000) + '1' + '}'.repeat(50_000))],
  ['unclosed deep', Buffer.from('['.repeat(200_000))],
  ['over the body limit', Buffer.from(`{"vm":"${'A'.repeat(1024 * 1024 + 10)}"}`)],
  [
    'many keys',
    Buffer.from(JSON.stringify(Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`k${i}`, i])))),
  ],
  ['long number', Buffer.from(`{"generation":${'9'.repeat(100_000)}}`)],
];

function bodyOf(
  operation: Operation,
  context: SchemaContext,
): fc.Arbitrary<{ body: Buffer | undefined; kind: string }> {
  const json = (value: unknown, kind: string) => ({ body: Buffer.from(JSON.stringify(value) ?? 'null'), kind });
  const schemaBodies = operation.body
    ? [
        { arbitrary: mutated(operation.body, context).map((v) => json(v, 'mutated')), weight: 8 },
        { arbitrary: conforming(operation.body, context).map((v) => json(v, 'conforming')), weight: 3 },
        {
          arbitrary: conforming(operation.body, { ...context, onlyKnown: true }).map((v) => json(v, 'known values')),
          weight: 6,
        },
      ]
    : [];
  return fc.oneof(
    ...schemaBodies,
    { arbitrary: fc.constant({ body: undefined, kind: 'none' }), weight: 2 },
    { arbitrary: hostileJson(context.known).map((v) => json(v, 'hostile JSON')), weight: 2 },
    { arbitrary: fc.constantFrom(...RAW_BODIES).map(([kind, body]) => ({ body, kind })), weight: 3 },
    {
      arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => ({ body: Buffer.from(b), kind: 'random bytes' })),
      weight: 1,
    },
    {
      arbitrary: fc.integer({ min: 500, max: 3000 }).map((depth) => json(nested(depth), `nested ${depth}`)),
      weight: 1,
    },
  );
}

const garbageToken = fc.oneof(
  fc.constantFrom(
    'Bearer',
    'Bearer ',
    'Basic YWRtaW46YWRtaW4=',
    'Bearer vtpm_',
    'Bearer ../../admin.token',
    'bearer\tx',
    `Bearer ${'x'.repeat(7000)}`,
    'Bearer \u00ff\u00fe',
    'Bearer a b',
  ),
  fc.string({ unit: 'binary-ascii', maxLength: 60 }).map((s) => `Bearer ${s.replace(/[^\t\x20-\x7e]/g, '')}`),
);

const credentials: fc.Arbitrary<Credential> = fc.oneof(
  { arbitrary: fc.constant<Credential>('admin'), weight: 4 },
  { arbitrary: fc.constant<Credential>('member'), weight: 2 },
  { arbitrary: fc.constantFrom<Credential>('agent', 'none'), weight: 2 },
  { arbitrary: garbageToken.map((garbage): Credential => ({ garbage })), weight: 2 },
);

/** Requests for one operation: its own method mostly, now and then another one or HEAD. */
export function requestsFor(operation: Operation, context: SchemaContext): fc.Arbitrary<FuzzRequest> {
  const method = fc.oneof(
    { arbitrary: fc.constant(operation.method), weight: 12 },
    { arbitrary: fc.constantFrom(...OTHER_METHODS, 'HEAD'), weight: 1 },
  );
  const contentType = fc.oneof(
    { arbitrary: fc.constantFrom(...JSON_TYPES), weight: 8 },
    { arbitrary: fc.constantFrom(...OTHER_TYPES), weight: 2 },
    { arbitrary: fc.constant(undefined), weight: 1 },
  );
  const fuzzed = fc
    .record({
      method,
      path: pathOf(operation, context),
      query: queryOf(operation, context),
      credential: credentials,
      contentType,
      body: bodyOf(operation, context),
    })
    .map(({ path, query, body, ...rest }) => ({
      ...rest,
      path: path + query,
      // A request without a body carries no content type: fastify refuses "JSON" with nothing in it, rightly.
      contentType: body.body === undefined ? undefined : rest.contentType,
      body: body.body,
      bodyKind: body.kind,
    }));
  const unknown = unknownFieldRequest(operation, context);
  return unknown ? fc.oneof({ arbitrary: fuzzed, weight: 7 }, { arbitrary: unknown, weight: 1 }) : fuzzed;
}

/**
 * A request that would succeed as far as the generator can make one (an admin's, real values everywhere)
 * but for one field its body's schema does not have: the one request that must be refused whoever sends
 * it, since a field dropped in silence (a misspelt `secure_bot`) is a request done otherwise than asked.
 */
function unknownFieldRequest(operation: Operation, context: SchemaContext): fc.Arbitrary<FuzzRequest> | undefined {
  const body = operation.body;
  if (body?.additionalProperties !== false) return undefined;
  const real = { ...context, onlyKnown: true };
  return fc
    .tuple(
      pathOf(operation, real),
      conforming(body, real),
      hostileString(context.known).filter((key) => !(key in (body.properties ?? {}))),
      hostileJson(context.known),
    )
    .map(([path, value, key, extra]) => ({
      method: operation.method,
      path,
      credential: 'admin' as const,
      contentType: 'application/json',
      body: Buffer.from(JSON.stringify({ ...(value as object), [key]: extra })),
      bodyKind: 'unknown field',
    }));
}

const agent = new Agent({ keepAlive: true, maxSockets: 8 });

/** Sends raw bytes; an answer later than the deadline is an answer of status 0 (stalled). */
export function send(base: string, request: FuzzRequest, authorization: string | undefined): Promise<Answer> {
  const url = new URL(base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {};
    if (authorization !== undefined) headers.authorization = authorization;
    if (request.contentType !== undefined) headers['content-type'] = request.contentType;
    if (request.body !== undefined) headers['content-length'] = request.body.length;
    const outgoing = httpRequest(
      { host: url.hostname, port: url.port, method: request.method, path: request.path, headers, agent },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            contentType: String(response.headers['content-type'] ?? ''),
            text: Buffer.concat(chunks).toString(),
            ms: performance.now() - started,
          }),
        );
        response.on('error', reject);
      },
    );
    outgoing.setTimeout(DEADLINE_MS, () => {
      outgoing.destroy();
      resolve({ status: 0, contentType: '', text: `no answer within ${DEADLINE_MS} ms`, ms: DEADLINE_MS });
    });
    outgoing.on('error', (error: NodeJS.ErrnoException) => {
      // A server may close the connection on a request it will not read to the end; that is an answer too.
      if (error.code === 'ECONNRESET' || error.code === 'EPIPE')
        resolve({ status: 400, contentType: 'reset', text: '', ms: performance.now() - started });
      else reject(error);
    });
    outgoing.end(request.body);
  });
}

/** What is wrong with an answer, or undefined when it is one the product may give. */
export function fault(request: FuzzRequest, answer: Answer): string | undefined {
  if (answer.status === 0) return `stalled: ${answer.text}`;
  if (answer.status >= 500) return `answered ${answer.status}: ${answer.text.slice(0, 400)}`;
  if (answer.ms > DEADLINE_MS) return `took ${Math.round(answer.ms)} ms`;
  if (request.bodyKind === 'unknown field' && answer.status < 400)
    return `accepted a body with a field its schema does not have (${answer.status})`;
  if (answer.status < 400 || request.method === 'HEAD' || answer.contentType === 'reset') return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.text);
  } catch {
    return `answered ${answer.status} with a body that is not JSON: ${answer.text.slice(0, 200)}`;
  }
  const error = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (typeof error?.code !== 'string' || error.code === '' || typeof error.message !== 'string') {
    return `answered ${answer.status} without the {error: {code, message}} shape: ${answer.text.slice(0, 200)}`;
  }
  return undefined;
}

/** A counterexample, readable: bodies are cut short. */
export function describeRequest(request: FuzzRequest): string {
  const body = request.body === undefined ? '(none)' : JSON.stringify(request.body.subarray(0, 300).toString());
  const who = typeof request.credential === 'string' ? request.credential : 'garbage token';
  const type = `content-type ${JSON.stringify(request.contentType)}`;
  return `${request.method} ${request.path.slice(0, 300)} as ${who}, ${type}, ${request.bodyKind} body ${body}`;
}

/** Fuzzes one route: `runs` requests made for it, each answered through `exchange`, which fails on a fault. */
export async function fuzzRoute(
  operation: Operation,
  context: SchemaContext,
  runs: number,
  exchange: (request: FuzzRequest) => Promise<void>,
): Promise<void> {
  await fuzz(fc.asyncProperty(requestsFor(operation, context), exchange), { runs });
}
