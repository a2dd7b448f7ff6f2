// The browser example in real headless Chromium (Debian's `chromium`, driven by
// playwright-core; nothing is downloaded): a node started like the quick start (the
// embedded demo config, here on NATS) serves /demo; events published by a backend
// appear on the page; the node restarts (events published while it is down) and the
// page resumes without loss or duplicates.
//
// Chromium: $CHROMIUM, else /usr/bin/chromium (`apt-get install chromium`); missing fails.

import assert from "node:assert/strict";
import { accessSync, constants, readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { chromium } from "playwright-core";

import { Cluster, DEMO, Publisher } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

describe("examples/browser in headless Chromium", { timeout: 300_000 }, () => {
  let cluster;
  let pub;
  let browser;
  let page;
  const consoleLines = [];

  before(async () => {
    accessSync(CHROMIUM, constants.X_OK); // a missing browser fails the run, never a skip
    cluster = await Cluster.start({ nodes: 0 });
    await cluster.startNode("demo", { embedded: true });
    pub = await Publisher.connect(cluster.natsUrl);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = await browser.newPage();
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  });

  after(async () => {
    await browser?.close();
    await pub?.close();
    await cluster?.stop();
  });

  const diag = () => `console:\n${consoleLines.join("\n")}\n${cluster.diag()}`;

  /** The page's event list: one entry per notification it was handed. */
  const pageEvents = () =>
    page.$$eval("#events li[data-seq]", (lis) => lis.map((li) => ({ seq: Number(li.dataset.seq), id: li.dataset.notificationId, event: li.dataset.event })).reverse());


  async function pollEvents(n) {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const evs = await pageEvents();
      if (evs.length >= n) return evs;
      if (Date.now() > deadline) throw new Error(`page shows ${evs.length}/${n} events\n${diag()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const newMessage = (uid, tag) => ({
    event: "newMessage",
    mailbox: "INBOX",
    message: { uid, mailbox: "INBOX", eml: `From: a@example.net\r\nSubject: ${tag} ${uid}\r\n\r\nhello` },
  });

  test("the page shows events as they are published, and resumes after a node restart without loss", async () => {
    const node = cluster.node("demo");
    const served = await (await fetch(`${node.http}/demo/herald-client.js`)).text();
    assert.ok(served === readFileSync(new URL("../dist/index.js", import.meta.url), "utf8"),
      "the node serves an older client: run `npm run bundle-demo` and rebuild herald (the file is compiled in)");
    await page.goto(`${node.http}/demo`);
    await page.waitForSelector('#state[data-state="connected"]', { timeout: 20_000 }).catch((e) => {
      throw new Error(`${e.message}\n${diag()}`);
    });
    assert.equal(await page.textContent("#alias"), DEMO.aliasId);

    // Live: what a backend publishes appears on the page (table and event list).
    for (let uid = 1; uid <= 10; uid++) await pub.alias(DEMO.aliasId, newMessage(uid, "live"));
    await pub.alias(DEMO.aliasId, { event: "flagsUpdated", mailbox: "INBOX", uids: [1], flags: ["\\Seen", "\\Flagged"] });
    await pub.alias(DEMO.aliasId, { event: "messagesMoved", sourceMailbox: "INBOX", destinationMailbox: "Archive", sourceUid: [2], destinationUid: [77] });
    await pollEvents(12);
    assert.equal(await page.textContent('#messages tr[data-uid="1"] td:nth-child(3)'), "live 1", "subject parsed from eml");
    assert.equal(await page.textContent('#messages tr[data-uid="1"] td:nth-child(4)'), "\\Seen\\Flagged", "flags shown");
    const moved = await page.$$eval("#messages tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    assert.ok(moved.some(([uid, mailbox]) => uid === "77" && mailbox === "Archive"), `move shown: ${JSON.stringify(moved)}`);

    // Restart: kill the node, publish while it is down, start it again on the same port.
    await node.proc.kill();
    await page.waitForSelector('#state[data-state="reconnecting"]', { timeout: 20_000 });
    for (let uid = 11; uid <= 20; uid++) await pub.alias(DEMO.aliasId, newMessage(uid, "while-down"));
    await cluster.startNode("demo", { embedded: true, port: node.port });
    await page.waitForSelector('#state[data-state="connected"]', { timeout: 60_000 }).catch((e) => {
      throw new Error(`${e.message}\n${diag()}`);
    });
    for (let uid = 21; uid <= 25; uid++) await pub.alias(DEMO.aliasId, newMessage(uid, "after"));

    const evs = await pollEvents(27);
    await new Promise((r) => setTimeout(r, 500)); // a duplicate would show up by now
    const final = await pageEvents();
    const ids = final.map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, `duplicates on the page: ${JSON.stringify(final)}`);
    assert.equal(final.length, 27, `${JSON.stringify(final)}\n${diag()}`);
    const seqs = final.map((e) => e.seq);
    assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `in order: ${seqs}`);
    const uids = await page.$$eval("#messages tr", (trs) => trs.map((tr) => Number(tr.dataset.uid)).sort((a, b) => a - b));
    for (let uid = 11; uid <= 25; uid++) assert.ok(uids.includes(uid), `uid ${uid} (published ${uid <= 20 ? "while the node was down" : "after"}) on the page`);
    assert.ok(Number(await page.textContent("#reconnects")) >= 1, "reconnect counter");
    assert.equal(evs.length >= 27, true);
  });
});

describe("/demo outside the demo configuration", { timeout: 60_000 }, () => {
  test("a node without the demo credentials does not serve the demo page", async () => {
    const cluster = await Cluster.start({
      nodes: 1,
      config: { auth: { publish_tokens: ["a-real-token"], providers: ["static"], static: { aliases: [], tokens: [] } } },
    });
    try {
      const node = cluster.node("A");
      for (const p of ["/demo", "/demo/herald-client.js"]) {
        const res = await fetch(`${node.http}${p}`);
        assert.equal(res.status, 404, p);
      }
    } finally {
      await cluster.stop();
    }
  });
});
