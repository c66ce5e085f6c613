#!/usr/bin/env node
// Browser check of the pack's subgraph blueprints (subgraphs/*.json), as a user meets them:
//  1. the node library lists them (sidebar "Node Library" -> SUBGRAPH BLUEPRINTS -> ... -> the blueprint
//     category) under their file names; screenshot of the opened tree;
//  2. clicking a blueprint there and then the canvas adds it: one subgraph node with the blueprint's inputs,
//     outputs and promoted widgets, and the blueprint's nodes inside; no error toast, dialog or console error;
//  3. (unless --no-run) the added blueprints run: Load Video (the pack's sample) -> Get Video Components -> each
//     blueprint -> Preview Image (matte) + Mask Preview (mask); the text blueprint gets an expression typed into
//     its promoted widget, the clicks blueprint a click from a core Text (Multiline) node on positive_coords.
//     The prompt the frontend builds (graphToPrompt) must contain the blueprint's nodes with those values, and
//     the run must finish with a matte frame per video frame. Then the clicks blueprint is opened (as its "enter
//     subgraph" button does): its Prompt Target editor must show the run's frames and take a click.
//
//   node check_blueprints.mjs http://127.0.0.1:8188 out/ [--pack comfyui-univs] [--timeout 600] [--no-run]
//
// Writes screenshots and blueprints_report.json to out/. Exit status: 0 all checks pass, 1 a check failed,
// 2 the check itself failed.
import fs from "node:fs";
import path from "node:path";
import { closeDialogs, launch, nextFrames, openComfy, trackRequests } from "./lib.mjs";

const SAMPLE = "univs_sample.mp4";
const TEXT = "cross: the cross moving down"; // the sample's purple cross, as the templates describe it
const CLICK = JSON.stringify([{ x: 84, y: 83 }]); // a click on the cross in frame 0 (KJNodes / core points JSON)

function parseArgs(argv) {
  const opts = { pack: "comfyui-univs", timeout: 600, run: true };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--pack") opts.pack = argv[++i];
    else if (argv[i] === "--timeout") opts.timeout = Number(argv[++i]);
    else if (argv[i] === "--no-run") opts.run = false;
    else pos.push(argv[i]);
  }
  if (pos.length !== 2) {
    console.error("usage: node check_blueprints.mjs COMFY_URL OUT_DIR [--pack comfyui-univs] [--timeout SECONDS] [--no-run]");
    process.exit(2);
  }
  return { url: pos[0].replace(/\/$/, ""), out: pos[1], ...opts };
}

async function fetchJson(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.json();
}

// The pack's blueprints as the server lists them, with what each file says it is.
async function expectedBlueprints(url, pack) {
  const all = await fetchJson(`${url}/global_subgraphs`);
  const out = [];
  for (const [id, entry] of Object.entries(all)) {
    if (entry.info?.node_pack !== `custom_nodes.${pack}`) continue;
    const full = await fetchJson(`${url}/global_subgraphs/${id}`);
    const wf = JSON.parse(full.data);
    const sg = wf.definitions.subgraphs[0];
    out.push({
      id, name: entry.name, category: sg.category ?? null,
      inputs: sg.inputs.map((i) => `${i.name}:${i.type}`),
      outputs: sg.outputs.map((o) => `${o.name}:${o.type}`),
      widget_inputs: wf.nodes[0].inputs.filter((i) => i.widget).map((i) => i.name),
      node_types: sg.nodes.map((n) => n.type).sort(),
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function warnings(page) {
  const out = [];
  for (const toast of await page.locator(".p-toast-message").all()) {
    out.push(`toast: ${(await toast.innerText()).replace(/\s*\n\s*/g, " | ").trim()}`);
  }
  for (const dialog of await page.locator("[role=dialog]").all()) {
    if (await dialog.isVisible()) out.push(`dialog: ${(await dialog.innerText()).replace(/\s*\n\s*/g, " | ").trim()}`);
  }
  return out;
}

// Sidebar "Node Library": opens the SUBGRAPH BLUEPRINTS folders down to the blueprints; returns the folder path.
async function openLibrary(page, names, category, timeoutMs) {
  const button = page.getByRole("button", { name: /^Node Library/ });
  await button.first().click();
  const heading = page.getByText("Subgraph Blueprints", { exact: true }).first();
  await heading.waitFor({ timeout: timeoutMs });
  const folders = [];
  // Global (installed) blueprints sit in a folder of their own (1.49.6: "Comfy Blueprints"), then the category.
  for (let depth = 0; depth < 4 && !(await page.getByText(names[0], { exact: true }).count()); depth++) {
    const candidates = depth === 0 ? ["Comfy Blueprints", category] : [category];
    let opened = false;
    for (const label of candidates) {
      const folder = page.getByText(label, { exact: true }).first();
      if (label && (await folder.count()) && !folders.includes(label)) {
        await folder.click();
        folders.push(label);
        opened = true;
        break;
      }
    }
    if (!opened) break;
    await nextFrames(page);
  }
  for (const name of names) await page.getByText(name, { exact: true }).first().waitFor({ timeout: timeoutMs });
  return folders;
}

async function graphSummary(page) {
  return page.evaluate(() => window.app.graph.nodes.map((n) => ({
    id: n.id, type: n.type, title: n.title, subgraph: !!n.subgraph,
    inputs: (n.inputs || []).map((i) => `${i.name}:${i.type}`),
    outputs: (n.outputs || []).map((o) => `${o.name}:${o.type}`),
    widgets: (n.widgets || []).map((w) => w.name),
    widget_values: Object.fromEntries((n.widgets || []).map((w) => [w.name, w.value])),
    inner_types: n.subgraph ? n.subgraph.nodes.map((x) => x.type).sort() : null,
  })));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  fs.mkdirSync(args.out, { recursive: true });
  const expected = await expectedBlueprints(args.url, args.pack);
  if (!expected.length) throw new Error(`no blueprints of custom_nodes.${args.pack} in /global_subgraphs`);
  const report = { url: args.url, pack: args.pack, started: new Date().toISOString(), blueprints: [], failures: [] };
  const fail = (msg) => { report.failures.push(msg); console.log(`  FAIL ${msg}`); };

  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    page.__outDir = args.out;
    const consoleErrors = [];
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    const net = trackRequests(page);
    await openComfy(page, args.url, { nodeType: "UniVS_PropagateMasks", timeoutMs });
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__);
    await net.idle({ timeoutMs });
    // a blank canvas: the default workflow's missing models are not ours to report
    await page.evaluate(async () => {
      await window.app.loadGraphData({ last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
        extra: { ds: { scale: 1, offset: [0, 0] } }, version: 0.4 }, true, false, "univs-blueprint-check");
      window.app.canvas.min_font_size_for_lod = 0; // node text in screenshots at any zoom (this page only)
    });
    await closeDialogs(page);
    for (const btn of await page.locator(".p-toast-message .p-toast-close-button").all()) await btn.click().catch(() => {});
    const errorsBefore = consoleErrors.length;

    const names = expected.map((b) => b.name);
    const category = expected[0].category;
    report.library_path = ["Subgraph Blueprints", ...(await openLibrary(page, names, category, timeoutMs))];
    await nextFrames(page);
    await page.screenshot({ path: path.join(args.out, "node_library.png") });
    console.log(`node library: ${report.library_path.join(" > ")} > ${names.join(", ")}`);

    // add each blueprint as a user does in 1.49.6: click it in the library (the node sticks to the pointer),
    // then click the canvas where it should go
    const added = {};
    const canvas = await page.locator("#graph-canvas").boundingBox();
    for (const [k, bp] of expected.entries()) {
      const before = (await graphSummary(page)).map((n) => n.id);
      await page.getByText(bp.name, { exact: true }).first().click();
      const at = [canvas.x + canvas.width * (0.45 + 0.25 * k), canvas.y + canvas.height * 0.3];
      await page.mouse.move(at[0], at[1], { steps: 5 });
      await page.mouse.click(at[0], at[1]);
      await page.waitForFunction((n) => window.app.graph.nodes.length > n, before.length, { timeout: timeoutMs });
      await net.idle({ timeoutMs });
      await nextFrames(page);
      const node = (await graphSummary(page)).find((n) => !before.includes(n.id));
      added[bp.name] = node;
      const entry = { ...bp, added: node, warnings: await warnings(page), checks: {} };
      entry.checks.is_subgraph_node = node.subgraph;
      entry.checks.title = node.title === bp.name;
      entry.checks.inputs = same(node.inputs, bp.inputs);
      entry.checks.outputs = same(node.outputs, bp.outputs);
      entry.checks.promoted_widgets = bp.widget_inputs.every((w) => node.widgets.includes(w));
      entry.checks.inner_nodes = same(node.inner_types, bp.node_types);
      entry.checks.no_warning = !entry.warnings.length;
      report.blueprints.push(entry);
      console.log(`- ${bp.name}: node ${node.id} (${node.type}), inputs ${node.inputs.join(", ")}; outputs ${node.outputs.join(", ")}; widgets ${node.widgets.join(", ")}`);
      for (const [k, v] of Object.entries(entry.checks)) if (!v) fail(`${bp.name}: ${k} (${JSON.stringify(node)})`);
      for (const w of entry.warnings) fail(`${bp.name}: ${w}`);
      await closeDialogs(page);
    }
    await page.keyboard.press("n").catch(() => {}); // close the library: room for the graph
    await page.evaluate(() => {
      const nodes = window.app.graph.nodes; // one below the other, room on the left for the video nodes
      nodes.forEach((n, i) => { n.pos = [440, 60 + i * 480]; });
      window.app.canvas.ds.scale = 0.75;
      window.app.canvas.ds.offset = [100, 40];
      window.app.canvas.setDirty(true, true);
    });
    await page.evaluate(() => window.app.canvas.deselectAll?.());
    await nextFrames(page);
    await page.screenshot({ path: path.join(args.out, "blueprints_on_canvas.png") });
    report.console_errors_while_adding = consoleErrors.slice(errorsBefore);
    for (const e of report.console_errors_while_adding) fail(`console error while adding: ${e}`);

    if (args.run) {
      report.run = await runBlueprints(page, net, added, timeoutMs, fail);
      await nextFrames(page);
      await page.screenshot({ path: path.join(args.out, "blueprints_run.png") });
    }
  } finally {
    await browser.close();
  }
  report.ok = !report.failures.length;
  fs.writeFileSync(path.join(args.out, "blueprints_report.json"), JSON.stringify(report, null, 2));
  console.log(`${report.ok ? "OK" : "PROBLEMS"}: ${report.blueprints.length} blueprints, report in ${path.join(args.out, "blueprints_report.json")}`);
  return report.ok ? 0 : 1;
}

// Wires the added blueprints to the sample clip and previews, queues the graph, waits for the run.
async function runBlueprints(page, net, added, timeoutMs, fail) {
  const text = Object.values(added).find((n) => n.widgets.includes("expressions"));
  const clicks = Object.values(added).find((n) => n.inputs.some((i) => i.startsWith("positive_coords:")));
  const wiring = await page.evaluate(([textId, clicksId, sample, expr, click]) => {
    const { graph } = window.app;
    const LG = window.LiteGraph;
    const add = (type, pos) => { const n = LG.createNode(type); n.pos = pos; graph.add(n); return n; };
    const load = add("LoadVideo", [0, 60]);
    load.widgets.find((w) => w.name === "file").value = sample;
    const comps = add("GetVideoComponents", [0, 520]);
    load.connect(0, comps, 0);
    const result = {};
    for (const id of [textId, clicksId]) {
      if (id == null) continue;
      const bp = graph.getNodeById(id);
      comps.connect(0, bp, bp.inputs.findIndex((i) => i.name === "images"));
      const matte = add("PreviewImage", [bp.pos[0] + 400, bp.pos[1]]);
      bp.connect(bp.outputs.findIndex((o) => o.name === "matte"), matte, 0);
      const mask = add("MaskPreview", [bp.pos[0] + 740, bp.pos[1]]);
      bp.connect(bp.outputs.findIndex((o) => o.name === "mask"), mask, 0);
      result[id] = { matte: matte.id, mask: mask.id };
    }
    if (textId != null) {
      const bp = graph.getNodeById(textId);
      const w = bp.widgets.find((x) => x.name === "expressions");
      w.value = expr;
      w.callback?.(expr);
    }
    if (clicksId != null) {
      const bp = graph.getNodeById(clicksId);
      const s = add("PrimitiveStringMultiline", [0, 760]);
      s.widgets[0].value = click;
      s.connect(0, bp, bp.inputs.findIndex((i) => i.name === "positive_coords"));
    }
    window.app.canvas.setDirty(true, true);
    return result;
  }, [text?.id ?? null, clicks?.id ?? null, SAMPLE, TEXT, CLICK]);

  // what the frontend sends: the blueprints' nodes, flattened, with the values set above
  const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
  const byType = (t) => Object.values(prompt).filter((n) => n.class_type === t);
  const run = { wiring, prompt_node_types: Object.values(prompt).map((n) => n.class_type).sort() };
  run.text_prompt = byType("UniVS_TextRefer").map((n) => n.inputs.expressions);
  run.click_prompt = byType("UniVS_PromptTarget").map((n) => n.inputs.positive_coords);
  if (text && !same(run.text_prompt, [TEXT])) fail(`text blueprint: the prompt carries expressions ${JSON.stringify(run.text_prompt)}`);
  if (clicks && !(run.click_prompt.length === 1 && Array.isArray(run.click_prompt[0]))) {
    fail(`clicks blueprint: positive_coords is not linked in the prompt (${JSON.stringify(run.click_prompt)})`);
  }

  // queue and wait for the end of the run (the server's websocket messages, through the page's api object)
  const t0 = Date.now();
  const outcome = await page.evaluate(async (ms) => {
    const api = window.app.api;
    const outputs = {};
    const done = new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ status: "timeout" }), ms);
      api.addEventListener("executed", (e) => { outputs[e.detail.display_node || e.detail.node] = e.detail.output; });
      api.addEventListener("execution_success", () => { clearTimeout(timer); resolve({ status: "success" }); });
      api.addEventListener("execution_error", (e) => {
        clearTimeout(timer);
        resolve({ status: "error", error: `${e.detail.node_type}: ${e.detail.exception_message}` });
      });
    });
    const queued = await window.app.queuePrompt(0, 1);
    const res = queued === false ? { status: "not queued" } : await done;
    const images = {};
    for (const [id, out] of Object.entries(outputs)) images[id] = (out?.images || []).length;
    return { ...res, images };
  }, timeoutMs);
  run.seconds = Math.round((Date.now() - t0) / 100) / 10;
  Object.assign(run, outcome);
  console.log(`run: ${run.status} in ${run.seconds} s; preview images per node ${JSON.stringify(run.images)}`);
  if (run.status !== "success") fail(`run: ${run.status}${run.error ? ` (${run.error})` : ""}`);
  for (const [bp, ids] of Object.entries(wiring)) {
    for (const [what, id] of Object.entries(ids)) {
      const n = run.images[String(id)] ?? 0;
      if (n < 1) fail(`run: the ${what} preview of blueprint node ${bp} shows no image`);
    }
  }
  await net.idle({ timeoutMs: 60_000 });
  if (clicks && run.status === "success") run.editor = await clickInsideSubgraph(page, clicks.id, fail);
  return run;
}

// The other way to prompt the clicks blueprint: open the subgraph (what the node's "enter subgraph" button does),
// find the run's frames in its Prompt Target editor and click on the object there; the click must land in the
// editor's state (the `editor` widget the prompt carries). Back to the root graph afterwards.
async function clickInsideSubgraph(page, nodeId, fail) {
  const inside = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    window.app.canvas.openSubgraph(node.subgraph, node);
    const target = window.app.canvas.graph.nodes.find((n) => n.type === "UniVS_PromptTarget");
    if (!target) return { found: false };
    window.app.canvas.ds.scale = 1;
    window.app.canvas.ds.offset = [300 - target.pos[0], 120 - target.pos[1]];
    window.app.canvas.setDirty(true, true);
    return { found: true, id: target.id, frames: target.univsEditor?.frames.length ?? null };
  }, nodeId);
  if (!inside.found) {
    fail("clicks blueprint: no Prompt Target inside the opened subgraph");
    return inside;
  }
  await nextFrames(page);
  await page.waitForFunction((id) => {
    const ed = window.app.canvas.graph.getNodeById(id)?.univsEditor;
    return ed?.image && ed.canvas.getBoundingClientRect().width > 50;
  }, inside.id, { timeout: 30_000 }).catch(() => {});
  const handle = await page.evaluateHandle((id) => window.app.canvas.graph.getNodeById(id).univsEditor.canvas, inside.id);
  const box = await handle.asElement().boundingBox();
  if (box) await page.mouse.click(box.x + box.width * 0.3, box.y + box.height * 0.35);
  await nextFrames(page);
  Object.assign(inside, await page.evaluate((id) => {
    const n = window.app.canvas.graph.getNodeById(id);
    const state = JSON.parse(n.widgets.find((w) => w.name === "editor").value || "{}");
    const points = (state.objects || []).flatMap((o) => Object.values(o.frames || {}).flatMap((f) => f.points || []));
    return { points };
  }, inside.id));
  await page.screenshot({ path: path.join(page.__outDir, "clicks_blueprint_editor.png") });
  await page.evaluate(() => window.app.canvas.setGraph(window.app.graph));
  console.log(`clicks blueprint, inside: the editor has ${inside.frames} frames; a click there gave points ${JSON.stringify(inside.points)}`);
  if (!inside.frames) fail("clicks blueprint: the Prompt Target editor inside shows no frames after the run");
  if (!inside.points?.length) fail("clicks blueprint: a click in the editor inside the subgraph left no point");
  return inside;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(2);
});
