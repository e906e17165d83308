// A spec expectation: a small pure function of the user's inputs that also says where upstream states it.

/** A rule of the conformance spec: call it for the expected value; `source` names where upstream says so. */
export type Rule<A extends unknown[], R> = ((...args: A) => R) & { readonly source: string };

export function rule<A extends unknown[], R>(source: string, fn: (...args: A) => R): Rule<A, R> {
  return Object.assign(fn, { source });
}

/** A TOML document as smol-toml parses it. */
export type Toml = Record<string, unknown>;

/** The value at `path` in a parsed TOML document (undefined where a level is missing or not a table). */
export function at(doc: Toml, path: readonly string[]): unknown {
  let cur: unknown = doc;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return undefined;
    cur = (cur as Toml)[key];
  }
  return cur;
}
