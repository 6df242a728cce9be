/**
 * Values from a JSON Schema (a route's, as the OpenAPI document or the
 * route table states it): `conforming` ones, so that a request gets past
 * validation into the code behind it, and `mutated` ones: of the wrong
 * type, without a required field, with fields nobody asked for, a hostile
 * value anywhere in the tree.
 */
import fc from 'fast-check';
import { hostileJson, hostileString } from './hostile.js';

export interface JsonSchema {
  $ref?: string;
  $id?: string;
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  patternProperties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  format?: string;
  description?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minItems?: number;
  maxItems?: number;
}

export interface SchemaContext {
  /** Schemas a `$ref` may name, by reference. */
  refs: ReadonlyMap<string, JsonSchema>;
  /** Real values of the service under test (UUIDs, names), which reach deeper than random ones. */
  known: readonly string[];
  /**
   * Every string that can be a known value is one: a request whose every field names something real
   * gets past the checks of each field, into the operation (an adopt of real swtpm work, say).
   */
  onlyKnown?: boolean;
}

const DEPTH = 4;

function resolve(schema: JsonSchema, context: SchemaContext): JsonSchema {
  let current = schema;
  for (let hops = 0; current.$ref !== undefined && hops < 10; hops += 1) {
    const target = context.refs.get(current.$ref);
    if (!target) throw new Error(`the schema names ${current.$ref}, which the document does not define`);
    current = target;
  }
  return current;
}

const typesOf = (schema: JsonSchema): string[] =>
  schema.type === undefined ? [] : Array.isArray(schema.type) ? schema.type : [schema.type];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Values a field's description suggests: the known UUIDs when it speaks of a UUID, else the words that
 * look like values ("TPM version: 1.2 or 2.0" gives 1.2 and 2.0; "tpm-tis (default) or tpm-crb"), else
 * all its words ("bios (default) or uefi"). The document says what a field takes; a generator that reads
 * it gets past each field's check as often as a caller who read it would.
 */
function hinted(schema: JsonSchema, known: readonly string[]): string[] {
  const description = schema.description ?? '';
  if (/\bUUID\b/i.test(description)) return known.filter((k) => UUID.test(k));
  const words = [...new Set(description.match(/[A-Za-z0-9][\w.:@-]*[A-Za-z0-9]|\d/g) ?? [])];
  const valueLike = words.filter((word) => /[\d:_-]|\w\.\w/.test(word));
  return valueLike.length > 0 ? valueLike : words;
}

function conformingString(schema: JsonSchema, context: SchemaContext): fc.Arbitrary<string> {
  const minLength = schema.minLength ?? 0;
  const maxLength = Math.min(schema.maxLength ?? 48, Math.max(minLength, 48));
  const fits = (value: string) =>
    value.length >= minLength &&
    value.length <= (schema.maxLength ?? Number.MAX_SAFE_INTEGER) &&
    (schema.pattern === undefined || new RegExp(schema.pattern, 'u').test(value));
  const hints = hinted(schema, context.known).filter(fits);
  const known = context.known.filter(fits);
  const generated =
    schema.format === 'uuid'
      ? fc.uuid()
      : schema.pattern !== undefined
        ? fc.stringMatching(new RegExp(schema.pattern)).filter(fits)
        : fc.string({ minLength, maxLength });
  const pool = hints.length > 0 ? hints : known;
  if (context.onlyKnown) return pool.length > 0 ? fc.constantFrom(...pool) : generated;
  return fc.oneof(
    ...[hints, known].filter((values) => values.length > 0).map((values) => fc.constantFrom(...values)),
    generated,
  );
}

function conformingNumber(schema: JsonSchema, integer: boolean): fc.Arbitrary<number> {
  const min = schema.minimum ?? schema.exclusiveMinimum;
  const max = schema.maximum ?? schema.exclusiveMaximum;
  if (integer) {
    const low = min === undefined ? -1000 : Math.ceil(min) + (schema.exclusiveMinimum !== undefined ? 1 : 0);
    const high = max === undefined ? 100_000 : Math.floor(max) - (schema.exclusiveMaximum !== undefined ? 1 : 0);
    return fc.oneof(fc.integer({ min: low, max: Math.min(high, low + 20) }), fc.integer({ min: low, max: high }));
  }
  return fc.double({
    min: min ?? -1e6,
    max: max ?? 1e6,
    minExcluded: schema.exclusiveMinimum !== undefined,
    maxExcluded: schema.exclusiveMaximum !== undefined,
    noNaN: true,
  });
}

function conformingObject(schema: JsonSchema, context: SchemaContext, depth: number): fc.Arbitrary<unknown> {
  const properties = schema.properties ?? {};
  const model = Object.fromEntries(
    Object.entries(properties).map(([key, property]) => [key, conforming(property, context, depth - 1)]),
  );
  const required = (schema.required ?? []).filter((key) => key in properties);
  const fixed = fc.record(model, { requiredKeys: required });
  const open = [
    ...Object.values(schema.patternProperties ?? {}),
    ...(typeof schema.additionalProperties === 'object' ? [schema.additionalProperties] : []),
  ];
  if (open.length === 0 || depth <= 0) return fixed;
  const extra = fc.dictionary(fc.string({ minLength: 1, maxLength: 16 }), conforming(open[0]!, context, depth - 1), {
    maxKeys: 3,
  });
  return fc.tuple(extra, fixed).map(([more, known]) => ({ ...more, ...(known as object) }));
}

/** A value the schema accepts (as far as this generator reads schemas: it does not promise more). */
export function conforming(schema: JsonSchema, context: SchemaContext, depth = DEPTH): fc.Arbitrary<unknown> {
  const s = resolve(schema, context);
  if (s.const !== undefined) return fc.constant(s.const);
  if (s.enum !== undefined && s.enum.length > 0) return fc.constantFrom(...s.enum);
  const alternatives = s.anyOf ?? s.oneOf;
  if (alternatives && alternatives.length > 0)
    return fc.oneof(...alternatives.map((a) => conforming(a, context, depth)));
  if (s.allOf && s.allOf.length > 0) return conforming(s.allOf[0]!, context, depth);
  const [type] = typesOf(s);
  switch (type) {
    case 'string':
      return conformingString(s, context);
    case 'integer':
      return conformingNumber(s, true);
    case 'number':
      return conformingNumber(s, false);
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array': {
      const items = depth > 0 && s.items ? conforming(s.items, context, depth - 1) : fc.constant(null);
      const minLength = s.minItems ?? 0;
      return fc.array(items, { minLength, maxLength: Math.max(minLength, Math.min(s.maxItems ?? 3, 3)) });
    }
    case 'object':
      return conformingObject(s, context, depth);
    default:
      return depth > 0 ? hostileJson(context.known) : fc.constant(null);
  }
}

function mutatedObject(schema: JsonSchema, context: SchemaContext, depth: number): fc.Arbitrary<unknown>[] {
  const base = conformingObject(schema, context, depth).map((value) => ({ ...(value as object) }));
  const keys = Object.keys(schema.properties ?? {});
  const required = schema.required ?? [];
  const variants: fc.Arbitrary<unknown>[] = [
    // A field nobody asked for.
    fc
      .tuple(base, hostileString(context.known), hostileJson(context.known))
      .map(([value, key, extra]) => ({ ...value, [key]: extra })),
  ];
  if (required.length > 0) {
    variants.push(
      fc.tuple(base, fc.constantFrom(...required)).map(([value, key]) => {
        const { [key]: _dropped, ...rest } = value as Record<string, unknown>;
        return rest;
      }),
    );
  }
  if (keys.length > 0 && depth > 0) {
    variants.push(
      fc
        .constantFrom(...keys)
        .chain((key) =>
          fc
            .tuple(base, mutated(schema.properties![key]!, context, depth - 1))
            .map(([value, bad]) => ({ ...value, [key]: bad })),
        ),
    );
  }
  return variants;
}

/** A value the schema is meant to refuse, or one at its edges: what a careless or hostile caller sends. */
export function mutated(schema: JsonSchema, context: SchemaContext, depth = DEPTH): fc.Arbitrary<unknown> {
  const s = resolve(schema, context);
  const types = typesOf(s);
  const variants: Array<{ arbitrary: fc.Arbitrary<unknown>; weight: number }> = [
    { arbitrary: conforming(s, context, depth), weight: 2 },
    { arbitrary: hostileJson(context.known), weight: 3 },
  ];
  if (types.includes('string') || s.anyOf || s.oneOf) {
    variants.push({ arbitrary: hostileString(context.known), weight: 4 });
  }
  if (types.includes('object')) {
    for (const arbitrary of mutatedObject(s, context, depth)) variants.push({ arbitrary, weight: 3 });
  }
  if (types.includes('array') && s.items && depth > 0) {
    variants.push({ arbitrary: fc.array(mutated(s.items, context, depth - 1), { maxLength: 4 }), weight: 2 });
  }
  if (types.includes('integer') || types.includes('number')) {
    variants.push({
      arbitrary: fc.constantFrom(0, -1, 0.5, 1e21, -1e21, 2 ** 31, 2 ** 53, 10_001, 3651, '1', '1e3', [1]),
      weight: 2,
    });
  }
  return fc.oneof(...variants);
}
