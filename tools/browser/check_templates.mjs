#!/usr/bin/env node
// Opens every template of the UniVS pack from ComfyUI's template browser, as a user would, and reports what the
// user sees: the card (title, whether the card cuts it, text, thumbnail), warnings after loading (error overlay,
// toasts, dialogs) and overlapping nodes. A validate-only template (extra.univs_ci: needs model files the pack
// does not ship) may show the missing-model panel for exactly the files its loaders declare; that is recorded as
// expected. Writes screenshots and report.json to the output folder.
//
//   node check_templates.mjs http://127.0.0.1:8188 out/ [--pack comfyui-univs] [--timeout 120]
//
// Exit status: 0 clean, 1 a template shows a warning or overlapping nodes, 2 the check itself failed.
import fs from "node:fs";
import path from "node:path";
import { closeDialogs, launch, nextFrames, openComfy, trackRequests } from "./lib.mjs";

function parseArgs(argv) {
  const opts = { pack: "comfyui-univs", timeout: 120 };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--pack") opts.pack = argv[++i];
    else if (argv[i] === "--timeout") opts.timeout = Number(argv[++i]);
    else if (argv[i] === "-h" || argv[i] === "--help") pos.length = 99;
    else pos.push(argv[i]);
  }
  if (pos.length !== 2) {
    console.error("usage: node check_templates.mjs COMFY_URL OUT_DIR [--pack comfyui-univs] [--timeout SECONDS]");
    process.exit(2);
  }
  return { url: pos[0].replace(/\/$/, ""), out: pos[1], ...opts };
}

const safeName = (name) => name.replace(/[^\w.-]+/g, "_");

async function fetchJson(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.json();
}

// Rectangles [x, y, w, h] that share more than an edge.
function overlaps(nodes) {
  const out = [];
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const [ax, ay, aw, ah] = nodes[i].rect, [bx, by, bw, bh] = nodes[j].rect;
      const w = Math.min(ax + aw, bx + bw) - Math.max(ax, bx);
      const h = Math.min(ay + ah, by + bh) - Math.max(ay, by);
      if (w > 0 && h > 0) {
        out.push({ a: `${nodes[i].id} ${nodes[i].title}`, b: `${nodes[j].id} ${nodes[j].title}`, intersection: [Math.round(w), Math.round(h)] });
      }
    }
  }
  return out;
}

class TemplateBrowser {
  constructor(page, pack, timeoutMs) {
    this.page = page;
    this.pack = pack;
    this.timeoutMs = timeoutMs;
    this.dialog = page.locator("[role=dialog]").filter({ has: page.getByTestId("template-workflows-content") });
  }

  // The sidebar's "Templates" button is what a user clicks; the command is the same action without the sidebar.
  async open() {
    const button = this.page.getByRole("button", { name: "Templates", exact: true });
    if (await button.count()) await button.first().click();
    else await this.page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    await this.dialog.waitFor({ timeout: this.timeoutMs });
    // Custom-node packs are listed under a collapsible "Extensions" heading, which only appears once the
    // template index is loaded (placeholder entries are shown until then).
    const extensions = this.dialog.getByRole("heading", { name: "Extensions", exact: true });
    await extensions.waitFor({ timeout: this.timeoutMs });
    const navItem = this.dialog.getByRole("button", { name: this.pack, exact: true });
    if (!(await navItem.isVisible())) await extensions.click();
    await navItem.click();
    const heading = this.dialog.locator("h2", { hasText: this.pack });
    await heading.first().waitFor({ timeout: this.timeoutMs });
  }

  card(name) {
    return this.dialog.getByTestId(`template-workflow-${name}`);
  }

  // Waits until every expected card is shown and its thumbnail finished loading (or failed).
  async waitForCards(names) {
    for (const name of names) await this.card(name).waitFor({ timeout: this.timeoutMs });
    await this.page.waitForFunction(() => [...document.querySelectorAll("[data-testid^=template-workflow-] img")]
      .every((img) => img.complete), null, { timeout: this.timeoutMs });
  }

  async describeCard(name) {
    return this.card(name).evaluate((card) => {
      const title = card.querySelector("h3");
      const img = card.querySelector("img");
      const lines = card.innerText.split("\n").map((s) => s.trim()).filter(Boolean);
      return {
        title: title?.textContent.trim() ?? null,
        title_tooltip: title?.getAttribute("title") ?? null,
        // the card clamps the title to one line (1.49.6: line-clamp-1) with an ellipsis: is all of it visible?
        title_truncated: title
          ? title.scrollHeight > title.clientHeight + 1 || title.scrollWidth > title.clientWidth + 1 : null,
        card_text: lines,
        // Anything besides the title and the "Node graph"/"App" badge is what the card shows as description/tags.
        other_text: lines.filter((l) => l !== title?.textContent.trim() && l !== "Node graph" && l !== "App"),
        // The card falls back to the frontend's default picture when the pack has no <name>.jpg beside the json.
        thumbnail: img ? {
          src: img.currentSrc || img.src,
          loaded: img.complete && img.naturalWidth > 0,
          fallback: /default-template\./.test(img.currentSrc || img.src),
        } : null,
      };
    });
  }

  async cardNames() {
    return this.dialog.locator("[data-testid^=template-workflow-]").evaluateAll((els) =>
      els.map((e) => e.dataset.testid.replace(/^template-workflow-/, "")).filter((n) => n !== "workflows-content"));
  }
}

// What the user is warned about after a load: the error overlay (missing nodes / models / media in 1.49.6),
// toasts and any dialog. Details come from the Errors tab the overlay links to.
async function collectWarnings(page) {
  const warnings = [];
  const overlay = page.getByTestId("error-overlay");
  let details = null;
  if (await overlay.isVisible()) {
    warnings.push({ source: "error-overlay", text: (await overlay.innerText()).replace(/\s*\n\s*/g, " | ").trim() });
    const see = page.getByTestId("error-overlay-see-errors");
    if (await see.isVisible()) {
      await see.click();
      const panel = page.getByTestId("properties-panel");
      await panel.waitFor({ timeout: 10_000 }).catch(() => {});
      if (await panel.isVisible()) details = (await panel.innerText()).split("\n").map((s) => s.trim()).filter(Boolean);
    }
  }
  for (const toast of await page.locator(".p-toast-message").all()) {
    const cls = (await toast.getAttribute("class")) || "";
    const severity = (cls.match(/p-toast-message-(\w+)/) || [])[1] || "unknown";
    warnings.push({ source: `toast:${severity}`, text: (await toast.innerText()).replace(/\s*\n\s*/g, " | ").trim() });
  }
  for (const dialog of await page.locator("[role=dialog]").all()) {
    if (await dialog.isVisible()) warnings.push({ source: "dialog", text: (await dialog.innerText()).replace(/\s*\n\s*/g, " | ").trim() });
  }
  return { warnings, details };
}

// Leaves the page without overlay, toasts, side panel or dialogs, so the next template starts clean.
async function resetUi(page) {
  await closeDialogs(page);
  const dismiss = page.getByTestId("error-overlay-dismiss");
  if (await dismiss.isVisible()) await dismiss.click();
  for (const btn of await page.locator(".p-toast-message .p-toast-close-button").all()) await btn.click().catch(() => {});
  await page.locator(".p-toast-message").first().waitFor({ state: "detached", timeout: 10_000 }).catch(() => {});
  const panel = page.getByTestId("properties-panel");
  if (await panel.isVisible()) {
    await page.getByRole("button", { name: "Toggle properties panel" }).first().click().catch(() => {});
    await panel.waitFor({ state: "hidden", timeout: 10_000 }).catch(() => {});
  }
}

// Model files a validate-only template declares on its loaders, or null for a template that runs as shipped.
function expectedMissingModels(workflow) {
  if (workflow.extra?.univs_ci !== "validate-only") return null;
  return workflow.nodes.flatMap((n) => (n.properties?.models || []).map((m) => m.name)).sort();
}

// The overlay's only complaint is "Missing Models", for exactly these files (the Errors tab lists each file).
function onlyMissingModels(warnings, details, files) {
  if (!details || !warnings.every((w) => w.source === "error-overlay")) return false;
  const count = Number((warnings[0].text.match(/(\d+) errors? found/) || [])[1]);
  const sections = details.filter((l) => /^Missing /.test(l));
  return count === files.length && sections.length === 1 && sections[0] === "Missing Models"
    && files.every((f) => details.includes(f));
}

async function nodeRects(page) {
  return page.evaluate(() => window.app.graph.nodes.map((n) => ({
    id: n.id,
    type: n.type,
    title: n.title,
    // getBounding() includes the title bar (and the collapsed width), i.e. what is drawn.
    rect: Array.from(n.getBounding()).map((v) => Math.round(v * 10) / 10),
  })));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  fs.mkdirSync(args.out, { recursive: true });
  const all = await fetchJson(`${args.url}/api/workflow_templates`);
  const names = all[args.pack];
  if (!names?.length) throw new Error(`no templates for pack '${args.pack}' in /api/workflow_templates (packs: ${Object.keys(all).join(", ")})`);
  names.sort();
  const report = { url: args.url, pack: args.pack, started: new Date().toISOString(), templates: [] };

  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const consoleErrors = [];
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    const net = trackRequests(page);
    const httpErrors = [];
    page.on("response", (r) => { if (r.status() >= 400) httpErrors.push(`${r.status()} ${r.request().method()} ${decodeURI(r.url())}`); });
    await openComfy(page, args.url, { timeoutMs });
    report.frontend_version = await page.evaluate(() => {
      // Screenshots show node text at any zoom (this page only; the user's LOD setting is not changed).
      window.app.canvas.min_font_size_for_lod = 0;
      return window.__COMFYUI_FRONTEND_VERSION__;
    });
    await net.idle({ timeoutMs });
    await resetUi(page); // a first visit may open the template browser or show the default workflow's errors

    const browserUi = new TemplateBrowser(page, args.pack, timeoutMs);
    await browserUi.open();
    await browserUi.waitForCards(names);
    await net.idle({ timeoutMs });
    report.cards_listed = await browserUi.cardNames();
    await page.screenshot({ path: path.join(args.out, "template_browser.png") });
    const cards = {};
    for (const name of names) cards[name] = await browserUi.describeCard(name);
    await closeDialogs(page);

    for (const name of names) {
      console.log(`- ${name}`);
      const workflow = await fetchJson(`${args.url}/api/workflow_templates/${encodeURIComponent(args.pack)}/${encodeURIComponent(name)}.json`);
      const expectedIds = workflow.nodes.map((n) => String(n.id)).sort();
      await resetUi(page);
      const firstError = httpErrors.length;
      await browserUi.open();
      await browserUi.card(name).click();
      await browserUi.dialog.waitFor({ state: "detached", timeout: timeoutMs });
      await page.waitForFunction((ids) => {
        const got = window.app.graph.nodes.map((n) => String(n.id)).sort(); // ids are strings once loaded
        return got.length === ids.length && got.every((id, i) => id === ids[i]);
      }, expectedIds, { timeout: timeoutMs });
      await net.idle({ timeoutMs });
      await nextFrames(page);
      const screenshot = `${safeName(name)}.png`;
      await page.screenshot({ path: path.join(args.out, screenshot) });
      const nodes = await nodeRects(page);
      let { warnings, details } = await collectWarnings(page);
      // A template that needs model files the pack does not ship (extra.univs_ci = "validate-only") is expected to
      // open with the missing-model panel, listing exactly the files its loaders declare (properties.models).
      const expectedMissing = expectedMissingModels(workflow);
      let expected_warnings = [];
      if (expectedMissing && warnings.length && onlyMissingModels(warnings, details, expectedMissing)) {
        expected_warnings = warnings;
        warnings = [];
      }
      const entry = {
        name,
        title: cards[name].title,
        description: cards[name].other_text.length ? cards[name].other_text.join(" | ") : null,
        card: cards[name],
        workflow_tab: await page.evaluate(() => window.app.extensionManager.workflow?.activeWorkflow?.filename ?? null),
        warnings,
        expected_warnings,
        expected_missing_models: expectedMissing,
        warning_details: details,
        overlaps: overlaps(nodes),
        http_errors: httpErrors.slice(firstError), // e.g. a missing thumbnail or media file
        nodes,
        screenshot,
      };
      report.templates.push(entry);
      for (const w of warnings) console.log(`    warning (${w.source}): ${w.text}`);
      for (const w of expected_warnings) console.log(`    expected (validate-only, models not shipped): ${w.text}; ${expectedMissing.join(", ")}`);
      if (cards[name].title_truncated) console.log(`    note: the card cuts the title ("${cards[name].title}")`);
      for (const o of entry.overlaps) console.log(`    overlap: ${o.a} x ${o.b} (${o.intersection.join("x")})`);
      if (cards[name].thumbnail?.fallback) console.log("    note: no thumbnail (the card shows the default picture)");
    }
    report.console_errors = consoleErrors;
    report.http_errors = httpErrors;
  } finally {
    await browser.close();
  }
  report.ok = report.templates.every((t) => !t.warnings.length && !t.overlaps.length);
  fs.writeFileSync(path.join(args.out, "report.json"), JSON.stringify(report, null, 2));
  console.log(`${report.ok ? "OK" : "PROBLEMS"}: ${report.templates.length} templates, report in ${path.join(args.out, "report.json")}`);
  return report.ok ? 0 : 1;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(2);
});
