// tests/openapi/schemas.mjs - every schema of api/openapi.yaml that Prism validates with must
// compile. Prism (@stoplight/prism-http, validator/validators/utils.js) compiles each request
// and answer schema with Ajv inside a tryCatch, and a schema that does not compile is skipped
// without a word: no violation is ever reported for it, and the proxy's check of that request
// or answer cannot fail. (Seen here: `nullable: true` with `enum: [..., null]`, as OpenAPI 3.0.3
// asks for, becomes an enum that lists null twice once Prism has converted it, which Ajv
// refuses.) So this compiles them as Prism does: the same operations (Prism's own reader of the
// spec), the same Ajv and the same options. Usage: node schemas.mjs SPEC. Exits 1 on any that
// does not compile.
import { createRequire } from "node:module";
import { resolve } from "node:path";

const require = createRequire(import.meta.url);
const prismHttp = require.resolve("@stoplight/prism-http");
const { getHttpOperationsFromSpec } = require(prismHttp);
const fromPrism = createRequire(prismHttp); // Prism's own Ajv, not whichever another package brings
const Ajv = fromPrism("ajv").default;
const addFormats = fromPrism("ajv-formats").default;

// as baseAjvOptions in Prism's validator/validators/utils.js (its logger only hides warnings)
const ajv = new Ajv({ allErrors: true, allowUnionTypes: true, allowMatchingProperties: true, strict: false, logger: false });
addFormats(ajv);

const operations = await getHttpOperationsFromSpec(resolve(process.argv[2]));
let compiled = 0;
const failed = [];
for (const op of operations) {
  const bundle = op.__bundled__;
  const where = [];
  const req = op.request || {};
  for (const c of req.body?.contents || []) where.push([`request body ${c.mediaType}`, c.schema]);
  for (const kind of ["headers", "query", "path", "cookie"])
    for (const p of req[kind] || []) where.push([`request ${kind} ${p.name}`, p.schema]);
  for (const r of op.responses || []) {
    for (const c of r.contents || []) where.push([`${r.code} ${c.mediaType}`, c.schema]);
    for (const h of r.headers || []) where.push([`${r.code} header ${h.name}`, h.schema]);
  }
  for (const [what, schema] of where) {
    if (!schema) continue;
    try {
      ajv.compile({ ...schema, __bundled__: bundle });
      compiled++;
    } catch (e) {
      failed.push(`${op.method.toUpperCase()} ${op.path}, ${what}: ${e.message}`);
    }
  }
}
for (const f of failed) console.log(`schema does not compile, so Prism would never check it: ${f}`);
console.log(`${compiled} schemas compile, ${failed.length} do not`);
process.exit(failed.length ? 1 : 0);
