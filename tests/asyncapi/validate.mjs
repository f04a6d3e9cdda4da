// Parses an AsyncAPI document with the reference parser and prints every diagnostic as a
// JSON line; exits 1 when the document does not parse or has an error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const { document, diagnostics } = await new Parser().parse(readFileSync(process.argv[2], "utf8"));
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
process.exit(document !== undefined && !diagnostics.some((d) => d.severity === 0) ? 0 : 1);
