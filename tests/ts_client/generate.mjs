// Generates schema.ts from an OpenAPI document with openapi-typescript's Node API, so that a
// `format: binary` schema (a file upload's field, a download's bytes) is typed `Blob`, not the
// `string` the CLI gives: its documented `transform` option.
// Usage: node generate.mjs OPENAPI_JSON OUTPUT_TS
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

import openapiTS, { astToString } from "openapi-typescript";
import ts from "typescript";

const BLOB = ts.factory.createTypeReferenceNode(ts.factory.createIdentifier("Blob"));
const NULL = ts.factory.createLiteralTypeNode(ts.factory.createNull());

const [source, output] = process.argv.slice(2);
if (source === undefined || output === undefined) {
  throw new Error("usage: node generate.mjs OPENAPI_JSON OUTPUT_TS");
}

const ast = await openapiTS(pathToFileURL(source), {
  transform(schemaObject) {
    if (schemaObject.format !== "binary") {
      return undefined;
    }
    // Nullable as OpenAPI 3.0 writes it, or as 3.1 does (a type list with "null").
    const nullable =
      schemaObject.nullable === true ||
      (Array.isArray(schemaObject.type) && schemaObject.type.includes("null"));
    return nullable ? ts.factory.createUnionTypeNode([BLOB, NULL]) : BLOB;
  },
});
writeFileSync(output, astToString(ast));
