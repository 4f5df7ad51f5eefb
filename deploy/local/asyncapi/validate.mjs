// Validates an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node validate.mjs <document.json> <dir holding node_modules/@asyncapi/parser>
// (deploy/local/install.sh installs it under var/asyncapi). Prints the parser's diagnostics as one
// JSON object; exits 1 when it reports an error or cannot build the document, 0 otherwise.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [path, modules] = process.argv.slice(2);
const require = createRequire(join(resolve(modules), "package.json"));
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

const text = await readFile(path, "utf8");
const { document, diagnostics } = await new Parser().parse(text, { source: resolve(path) });
const shown = diagnostics.map((d) => ({
  severity: d.severity,
  code: d.code,
  message: d.message,
  path: d.path.join("/"),
}));
const errors = shown.filter((d) => d.severity === DiagnosticSeverity.Error);
const out = {
  valid: document !== undefined && errors.length === 0,
  version: document ? document.version() : null,
  channels: document ? document.channels().length : 0,
  operations: document ? document.operations().length : 0,
  messages: document ? document.allMessages().length : 0,
  errors,
  warnings: shown.filter((d) => d.severity !== DiagnosticSeverity.Error),
};
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.valid ? 0 : 1);
