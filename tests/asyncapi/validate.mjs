// Validates each AsyncAPI document named on the command line with @asyncapi/parser:
// prints each file's errors and exits 1 when any has one.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"));
  // Severity 0 is an error; 1 to 3 are warnings, information and hints.
  const errors = diagnostics.filter((d) => d.severity === 0);
  if (!document || errors.length > 0) {
    failed = true;
    for (const d of errors) {
      console.log(`${file}: ${d.message} at ${JSON.stringify(d.path)}`);
    }
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}, ${document.operations().length} operations`);
  }
}
process.exit(failed ? 1 : 0);
