/**
 * A query on the API's hot path, built and compiled by kysely once and then
 * run with each call's arguments bound in: building and compiling the query
 * cost more than the indexed read it asks for. The SQL is whatever the
 * dialect's compiler made of it, so this stays dialect-neutral.
 */
import type { Compilable, CompiledQuery, Kysely } from 'kysely';

/** Stand-ins for the arguments while compiling: strings no caller passes, found again among the parameters. */
const standIn = (index: number) => `\u0000argument ${index}\u0000`;

interface Compiled<Row> {
  query: CompiledQuery<Row>;
  /** For each parameter of the compiled query, the index of the argument it is, or -1 for a constant. */
  sources: number[];
}

function compileOnce<Args extends string[], Row>(build: (...args: Args) => Compilable<Row>): Compiled<Row> {
  const standIns = Array.from({ length: build.length }, (_, index) => standIn(index));
  const query = build(...(standIns as Args)).compile();
  const sources = query.parameters.map((parameter) => standIns.indexOf(parameter as string));
  standIns.forEach((_, index) => {
    // An argument kysely wrote into the SQL text instead of binding it would be run with the stand-in's value.
    if (!sources.includes(index)) throw new Error(`argument ${index} of a prepared query is not one of its parameters`);
  });
  return { query, sources };
}

/** `build` names each argument it binds (its arity is the number of arguments); it runs once, on the first call. */
export function preparedQuery<DB, Args extends string[], Row>(
  db: Kysely<DB>,
  build: (...args: Args) => Compilable<Row>,
): (...args: Args) => Promise<Row[]> {
  let compiled: Compiled<Row> | undefined;
  return async (...args) => {
    compiled ??= compileOnce(build);
    const { query, sources } = compiled;
    const parameters = sources.map((source, index) => (source === -1 ? query.parameters[index] : args[source]));
    return (await db.executeQuery<Row>({ ...query, parameters })).rows;
  };
}
