// Copies the compiled client next to the browser example, which `herald serve` embeds
// (the Rust build must not need npm): `npm run bundle-demo`, then commit it and rebuild
// herald. test/unit.test.mjs fails when the committed copy differs from a fresh build.
import { copyFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const from = path.join(HERE, "..", "dist", "index.js");
const to = path.join(HERE, "..", "..", "..", "examples", "browser", "herald-client.js");
copyFileSync(from, to);
console.log(`copied ${path.relative(process.cwd(), from)} -> ${path.relative(process.cwd(), to)}`);
