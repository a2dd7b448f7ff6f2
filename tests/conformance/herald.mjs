// Starts a real `herald serve` for a conformance test: the embedded demo config (no
// --config), the in-process bus, a free port. Publishes through the node's
// `POST /v1/publish` with the demo publish token, as a backend would.
//
// Binary: $HERALD_BIN, else <repo>/target/debug/herald; a missing one fails the test.

import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
/// The source documents: $HERALD_SEEDS, else `../shared/seeds` beside the repository
/// (a git worktree elsewhere sets the variable).
export const SEEDS = process.env.HERALD_SEEDS || path.resolve(REPO, "..", "shared", "seeds");

/** The demo data of config/dev.toml that the documents' examples are pointed at. */
export const DEMO = {
  user: "demo@herald.local",
  password: "demo",
  aliasId: "64b7f0c2a1b2c3d4e5f60718",
  apiToken: "herald-demo-token",
  publishToken: "herald-dev-admin",
  jwtSecret: "herald-dev-jwt-secret",
};

function heraldBinary() {
  const bin = process.env.HERALD_BIN || path.join(REPO, "target", "debug", "herald");
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`herald binary not found at ${bin}: run \`cargo build -p herald\` first (or set HERALD_BIN)`);
  }
  return bin;
}

/**
 * Starts a node; resolves to `{ url, wsUrl(pathAndQuery), publish(body), logs, stop() }`.
 * `env` adds `HERALD__SECTION__KEY` overrides on top of the embedded demo config.
 */
export async function startHerald(env = {}) {
  const child = spawn(heraldBinary(), ["serve"], {
    env: { ...process.env, HERALD__SERVER__LISTEN: "127.0.0.1:0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs = [];
  createInterface({ input: child.stderr }).on("line", (line) => logs.push(line));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start in 20 s:\n${logs.join("\n")}`)), 20_000);
    child.once("exit", (code) => reject(new Error(`herald exited with ${code}:\n${logs.join("\n")}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = /^herald listening on (http:\/\/\S+)\s*$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  return {
    url,
    logs,
    wsUrl: (pathAndQuery) => url.replace(/^http/, "ws") + pathAndQuery,
    /** POST /v1/publish with the demo publish token; resolves to the parsed 202 body. */
    async publish(body) {
      const res = await fetch(`${url}/v1/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${DEMO.publishToken}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      if (res.status !== 202) throw new Error(`publish answered ${res.status}: ${text}`);
      return JSON.parse(text);
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Reads a source document by its number prefix (`"000"`). */
export async function seed(number) {
  const { readdirSync, readFileSync } = await import("node:fs");
  const file = readdirSync(SEEDS).find((f) => f.startsWith(`${number}_`));
  if (!file) throw new Error(`no seed document ${number}_* in ${SEEDS}`);
  return readFileSync(path.join(SEEDS, file), "utf8");
}

/** The fenced code blocks of a document with the given language tag, in order. */
export function codeBlocks(doc, lang) {
  const re = new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g");
  return [...doc.matchAll(re)].map((m) => m[1]);
}
