#!/usr/bin/env node
// Browser check of the UniVS prompt editor (the canvas on "UniVS Prompt Target"):
//  - saved clicks are not drawn over the "No frame yet" placeholder,
//  - "upload frame" with frame_index 12 stores the still as frame 12 and the saved frame-12 click shows on it,
//  - a click lands in the state JSON under frame "12",
//  - the still goes through POST /upload/image (input/univs/) and the node keeps only a reference,
//  - the reference survives a save/load round trip, old workflows with a data URL still show their still,
//  - the JSON `editor` widget is hidden but serialized and sent with the prompt,
//  - weak-frame marks (unless --no-run): two chained Prompt Targets on the sample clip (the template's triangle
//    clicks, frames 0..29) feed "Track Objects"; after the run both editors' scrubbers show marks at exactly the
//    frames the server reported weak (its ui `univs_weak`, also Overlay Preview's `weak_frames` output), with a
//    tooltip naming frame, object and confidence; clicking a mark shows that frame; a cached re-run brings the marks
//    back to freshly loaded editors; editing the prompts dims them; an uploaded still and a different clip (frames
//    0..19) drop them. Needs the sample clip in ComfyUI's input folder (the pack copies it there) and runs the
//    built-in model on the CPU (a minute or two).
//
//   node check_editor.mjs http://127.0.0.1:8188 out/ [--image still.png] [--input-dir ComfyUI/input] [--no-run]
//                         [--timeout SECONDS]
//
// Without --image a 320x240 test still is drawn in the page and written to out/still.png. A given image must be a
// PNG of at least 240x100 pixels (the check clicks at fixed pixels).
//
// Exit status: 0 all checks pass, 1 a check failed, 2 the check itself failed.
import fs from "node:fs";
import path from "node:path";
import { closeDialogs, launch, nextFrames, openComfy, trackRequests } from "./lib.mjs";

const NODE = "UniVS_PromptTarget";
const EDITOR_JS = "/extensions/comfyui-univs/js/univs_prompt_editor.js";

function parseArgs(argv) {
  const opts = { image: null, inputDir: null, run: true, timeoutS: 600 };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--image") opts.image = argv[++i];
    else if (argv[i] === "--input-dir") opts.inputDir = argv[++i];
    else if (argv[i] === "--no-run") opts.run = false;
    else if (argv[i] === "--timeout") opts.timeoutS = Number(argv[++i]);
    else pos.push(argv[i]);
  }
  if (pos.length !== 2) {
    console.error("usage: node check_editor.mjs COMFY_URL OUT_DIR [--image STILL.png] [--input-dir COMFY_INPUT_DIR] [--no-run] [--timeout S]");
    process.exit(2);
  }
  return { url: pos[0].replace(/\/$/, ""), out: pos[1], ...opts };
}

// A one-node workflow as it would be saved: frame_index and a saved positive click of object 1 on that frame.
function workflow(properties = {}, frame = 12) {
  const state = { version: 1, objects: [{ id: 1, label: "saved", frames: { [frame]: { points: [[100, 80, 1]], box: null } } }] };
  return {
    last_node_id: 1, last_link_id: 0, links: [], groups: [], config: {}, version: 0.4,
    extra: { ds: { scale: 1, offset: [0, 0] } },
    nodes: [{
      id: 1, type: NODE, pos: [60, 60], size: [460, 560], flags: {}, order: 0, mode: 0,
      inputs: [], outputs: [{ name: "prompts", type: "UNIVS_PROMPTS", links: null }],
      properties: { "Node name for S&R": NODE, ...properties },
      widgets_values: [frame, 0, "", JSON.stringify(state)],
    }],
  };
}

async function load(page, net, wf) {
  await page.evaluate(async (w) => {
    await window.app.loadGraphData(w, true, false, "univs-editor-check");
    const ds = window.app.canvas.ds; // restore_view is off: put the node on screen at zoom 1
    ds.scale = 1;
    ds.offset = [0, 40];
    window.app.canvas.setDirty(true, true);
  }, wf);
  await page.waitForFunction((type) => window.app.graph.nodes.some((n) => n.type === type && n.univsEditor), NODE);
  await net.idle();
  await nextFrames(page);
}

// Pixel of the editor canvas at image coordinates (x, y), and whether it is object 1's colour.
async function probePixel(page, x, y) {
  return page.evaluate(async ([x, y, js, type]) => {
    const { objectColor } = await import(js);
    const ed = window.app.graph.nodes.find((n) => n.type === type).univsEditor;
    ed.draw();
    const { s, ox, oy } = ed.layout();
    const [r, g, b, a] = ed.canvas.getContext("2d").getImageData(Math.round(ox + x * s), Math.round(oy + y * s), 1, 1).data;
    const want = objectColor(1).match(/\d+/g).map(Number);
    const near = Math.abs(r - want[0]) + Math.abs(g - want[1]) + Math.abs(b - want[2]) < 30 && a === 255;
    return { rgba: [r, g, b, a], objectColour: want, isObjectColour: near };
  }, [x, y, EDITOR_JS, NODE]);
}

async function drawStill(page, file) {
  const b64 = await page.evaluate(() => {
    const c = Object.assign(document.createElement("canvas"), { width: 320, height: 240 });
    const g = c.getContext("2d");
    const sky = g.createLinearGradient(0, 0, 0, 240);
    sky.addColorStop(0, "#1e3c5a");
    sky.addColorStop(1, "#1e8c5a");
    g.fillStyle = sky;
    g.fillRect(0, 0, 320, 240);
    g.fillStyle = "#dcc828";
    g.beginPath();
    g.arc(80, 80, 40, 0, Math.PI * 2);
    g.fill();
    g.fillStyle = "#c83c3c";
    g.fillRect(180, 120, 110, 90);
    return c.toDataURL("image/png").split(",")[1];
  });
  fs.writeFileSync(file, Buffer.from(b64, "base64"));
}

const pngSize = (file) => {
  const b = fs.readFileSync(file);
  if (b.toString("latin1", 1, 4) !== "PNG") throw new Error(`${file}: not a PNG`);
  return [b.readUInt32BE(16), b.readUInt32BE(20)];
};

async function editorInfo(page) {
  return page.evaluate(async (type) => {
    const node = window.app.graph.nodes.find((n) => n.type === type);
    const ed = node.univsEditor;
    const w = node.widgets.find((x) => x.name === "editor");
    const prompt = await window.app.graphToPrompt();
    return {
      frame: ed.currentFrame(),
      frames: ed.frames.map((f) => ({ frame: f.frame, url: f.url.slice(0, 120) })),
      hasImage: !!ed.image,
      imageSize: ed.image ? [ed.image.naturalWidth, ed.image.naturalHeight] : null,
      frameLabel: ed.frameLabel.textContent,
      state: JSON.parse(w.value || "{}"),
      upload: node.properties.univs_upload ?? null,
      propertiesBytes: JSON.stringify(node.properties).length,
      widgetHidden: w.hidden === true,
      widgetVisible: node.isWidgetVisible ? node.isWidgetVisible(w) : null,
      widgetInLayout: node.getLayoutWidgets ? node.getLayoutWidgets().includes(w) : null,
      widgetNames: node.widgets.map((x) => x.name),
      serializedWidgets: node.serialize().widgets_values,
      promptEditorInput: prompt.output[String(node.id)]?.inputs?.editor ?? null,
    };
  }, NODE);
}

// ------------------------------------------------------------------------------------------ weak-frame marks
const SAMPLE = "univs_sample.mp4";
const TRACK = "UniVS_PropagateMasks";
// The "Clicks on two objects" template's triangle: clicks on frame 0, a correction on frame 12.
const TRIANGLE_0 = { version: 1, objects: [{ id: 1, label: "triangle", frames: { 0: { points: [[199, 68, 1], [195, 65, 1], [208, 78, 0]], box: null } } }] };
const TRIANGLE_12 = { version: 1, objects: [{ id: 1, label: "triangle", frames: { 12: { points: [[211, 152, 1]], box: null } } }] };

// Load Video -> Get Video Components -> Get Image from Batch (frames 0..length-1) -> two chained Prompt Targets
// (image connected) -> Track Objects (forward) -> Overlay Preview -> Preview Any of its weak_frames. Built with
// the graph API (what a user wires by hand) and returned serialized, as a saved workflow.
async function weakWorkflow(page, length) {
  return page.evaluate(([sample, length, a, b]) => {
    const { graph } = window.app;
    graph.clear();
    const LG = window.LiteGraph;
    const add = (type, pos, values = {}) => {
      const n = LG.createNode(type);
      n.pos = pos;
      graph.add(n);
      for (const [k, v] of Object.entries(values)) n.widgets.find((w) => w.name === k).value = v;
      return n;
    };
    const slot = (n, name) => n.inputs.findIndex((i) => i.name === name);
    const load = add("LoadVideo", [1100, 60], { file: sample });
    const comps = add("GetVideoComponents", [1100, 500]);
    const batch = add("ImageFromBatch", [1100, 640], { batch_index: 0, length });
    const model = add("UniVS_LoadModel", [1500, 60]);
    const ptA = add("UniVS_PromptTarget", [60, 60], { frame_index: 0, object_id: 1, label: "triangle", editor: JSON.stringify(a) });
    const ptB = add("UniVS_PromptTarget", [560, 60], { frame_index: 12, object_id: 1, label: "triangle", editor: JSON.stringify(b) });
    const track = add("UniVS_PropagateMasks", [1500, 360], { direction: "forward" });
    const overlay = add("UniVS_OverlayPreview", [1900, 60], { labels: false });
    const show = add("PreviewAny", [1900, 600]);
    load.connect(0, comps, 0);
    comps.connect(0, batch, 0);
    for (const pt of [ptA, ptB]) batch.connect(0, pt, slot(pt, "image"));
    ptA.connect(0, ptB, slot(ptB, "prompts"));
    ptB.connect(0, track, slot(track, "prompts"));
    model.connect(0, track, slot(track, "model"));
    batch.connect(0, track, slot(track, "images"));
    track.connect(0, overlay, slot(overlay, "tracks"));
    overlay.connect(1, show, 0);
    const wf = graph.serialize();
    return { wf, ids: { ptA: ptA.id, ptB: ptB.id, track: track.id, overlay: overlay.id, show: show.id } };
  }, [SAMPLE, length, TRIANGLE_0, TRIANGLE_12]);
}

// Queue the loaded graph; resolve with the run's outcome and every node's ui output ("executed" messages,
// cached replays included) once the server reports success or an error.
async function queueAndWait(page, timeoutMs) {
  return page.evaluate(async (ms) => {
    const api = window.app.api;
    const outputs = {};
    const order = [];
    let off = () => {};
    const done = new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ status: "timeout" }), ms);
      const onExecuted = (e) => { const id = e.detail.display_node || e.detail.node; outputs[id] = e.detail.output; order.push(id); };
      const onSuccess = () => { clearTimeout(timer); resolve({ status: "success" }); };
      const onError = (e) => { clearTimeout(timer); resolve({ status: "error", error: `${e.detail.node_type}: ${e.detail.exception_message}` }); };
      api.addEventListener("executed", onExecuted);
      api.addEventListener("execution_success", onSuccess);
      api.addEventListener("execution_error", onError);
      off = () => {
        api.removeEventListener("executed", onExecuted);
        api.removeEventListener("execution_success", onSuccess);
        api.removeEventListener("execution_error", onError);
      };
    });
    const t0 = Date.now();
    const queued = await window.app.queuePrompt(0, 1);
    const res = queued === false ? { status: "not queued" } : await done;
    off();
    return { ...res, seconds: Math.round((Date.now() - t0) / 100) / 10, outputs, order };
  }, timeoutMs);
}

// What an editor's scrubber shows: its marks (frames, scrubber index, tooltip, colour, dimmed) and where it is.
async function marksOf(page, id) {
  return page.evaluate(async ([id, js]) => {
    const { objectColor } = await import(js);
    const ed = window.app.graph.getNodeById(id).univsEditor;
    const marks = [...ed.marks.querySelectorAll(".univs-weak-mark")].map((m) => ({
      frames: m.dataset.frames.split(",").map(Number),
      index: m.dataset.index == null ? null : Number(m.dataset.index),
      shownFrame: m.dataset.index == null ? null : ed.frames[Number(m.dataset.index)]?.frame,
      title: m.title,
      aria: m.getAttribute("aria-label"),
      colour: getComputedStyle(m).backgroundColor,
      opacity: Number(getComputedStyle(m).opacity),
      visible: m.getBoundingClientRect().width > 0,
    }));
    return {
      marks,
      frames: marks.flatMap((m) => m.frames).sort((a, b) => a - b),
      stripVisible: !ed.marks.hidden,
      objectColour: objectColor(1).replace(/,/g, ", "),
      frame: ed.currentFrame(),
      slider: Number(ed.slider.value),
      shown: ed.frames.length,
      label: ed.frameLabel.textContent,
    };
  }, [id, EDITOR_JS]);
}

const sameList = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function checkWeakMarks(page, net, args, check) {
  const timeoutMs = args.timeoutS * 1000;
  const built = await weakWorkflow(page, 30);
  const { ids } = built;
  const loadTagged = async () => { // the editors, tagged for locators: [data-check="A"] / "B"
    await load(page, net, built.wf);
    await page.evaluate(([a, b]) => {
      window.app.graph.getNodeById(a).univsEditor.root.dataset.check = "A";
      window.app.graph.getNodeById(b).univsEditor.root.dataset.check = "B";
    }, [ids.ptA, ids.ptB]);
  };
  await loadTagged();

  // 1. The run: the server's report, Overlay Preview's weak_frames, and the marks on both editors.
  const run = await queueAndWait(page, timeoutMs);
  console.log(`weak-marks run: ${run.status} in ${run.seconds} s${run.error ? ` (${run.error})` : ""}`);
  check("run on the sample (frames 0..29) succeeds", run.status === "success", { status: run.status, error: run.error });
  if (run.status !== "success") return;
  const report = run.outputs[String(ids.track)]?.univs_weak?.[0];
  const listed = String(run.outputs[String(ids.show)]?.text?.[0] ?? "").trim();
  const overlayFrames = listed ? listed.split(",").map(Number) : [];
  console.log(`server: weak frames ${JSON.stringify(report?.frames)}; Overlay Preview weak_frames "${listed}"`);
  check("the run reports weak frames (ui univs_weak) and they match Overlay Preview's weak_frames",
    report && report.frames.length > 0 && sameList(report.frames, overlayFrames) && sameList(report.size, [320, 240, 30]),
    { report, listed });
  if (!report?.frames.length) return;
  await page.waitForFunction(([a, b]) => [a, b].every((id) => window.app.graph.getNodeById(id).univsEditor.image?.complete), [ids.ptA, ids.ptB]);
  await nextFrames(page);
  const A = await marksOf(page, ids.ptA), B = await marksOf(page, ids.ptB);
  const exact = (m) => m.stripVisible && m.shown === 30 && sameList(m.frames, report.frames)
    && m.marks.every((k) => k.visible && k.frames.length === 1 && k.shownFrame === k.frames[0]);
  check("both chained editors mark exactly the reported frames, each under its own scrubber position",
    exact(A) && exact(B), { reported: report.frames, A, B });
  const expected = (f) => {
    const { level, weak } = report.objects[0];
    const c = weak.find((w) => w[0] === f)[1];
    const num = (v) => String(Number(v.toPrecision(2))).replace(".", "\\.");
    return c == null ? new RegExp(`^frame ${f}: weak \\(1 triangle: lost`) : new RegExp(`^frame ${f}: weak \\(1 triangle: confidence ${num(c)}, usual ${num(level)}\\)`);
  };
  check("each mark has a tooltip and an accessible name: frame, object, confidence; in object 1's colour",
    A.marks.every((k) => expected(k.frames[0]).test(k.title) && expected(k.frames[0]).test(k.aria) && k.colour === A.objectColour),
    { marks: A.marks.map(({ title, aria, colour }) => ({ title, aria, colour })), objectColour: A.objectColour });
  const shotBox = await page.evaluate((a) => {
    const r = window.app.graph.getNodeById(a).univsEditor.root.getBoundingClientRect();
    return { x: Math.max(0, r.left - 10), y: Math.max(0, r.top - 10), width: r.width + 20, height: r.height + 20 };
  }, ids.ptA);
  await page.screenshot({ path: path.join(args.out, "editor_weak_marks.png"), clip: shotBox });

  // 2. Clicking a mark (a real click on it) moves the scrubber to that frame.
  const target = report.frames[report.frames.length - 1];
  await page.locator(`[data-check="A"] .univs-weak-mark[data-frames="${target}"]`).click();
  await nextFrames(page);
  let a = await marksOf(page, ids.ptA);
  check(`clicking the mark of frame ${target} shows frame ${target}`,
    a.frame === target && a.slider === target && new RegExp(`^frame ${target} / 29 · weak`).test(a.label), a);
  await page.screenshot({ path: path.join(args.out, "editor_weak_mark_clicked.png"), clip: shotBox });

  // 3. Cached re-run: freshly loaded editors (no marks) get them back from the replayed ui.
  await loadTagged();
  const fresh = await marksOf(page, ids.ptA);
  const cached = await queueAndWait(page, timeoutMs);
  await nextFrames(page);
  a = await marksOf(page, ids.ptA);
  const b = await marksOf(page, ids.ptB);
  check("a cached re-run (nothing recomputed) brings the same marks back to reloaded editors",
    cached.status === "success" && !fresh.stripVisible && cached.outputs[String(ids.track)]
      && sameList(a.frames, report.frames) && sameList(b.frames, report.frames),
    { status: cached.status, seconds: cached.seconds, replayed: cached.order, before: fresh.frames, A: a.frames, B: b.frames });

  // 4. Editing the prompts (a click on frame 0 of editor A) keeps the marks, dimmed, with a note.
  await page.evaluate((id) => window.app.graph.getNodeById(id).univsEditor.showFrame(0), ids.ptA);
  await page.waitForFunction((id) => window.app.graph.getNodeById(id).univsEditor.image?.complete, ids.ptA);
  const at = await page.evaluate(([id, x, y]) => {
    const ed = window.app.graph.getNodeById(id).univsEditor;
    const r = ed.canvas.getBoundingClientRect();
    const { s, ox, oy } = ed.layout();
    return [r.left + ((ox + x * s) * r.width) / ed.canvas.width, r.top + ((oy + y * s) * r.height) / ed.canvas.height];
  }, [ids.ptA, 60, 200]);
  await page.mouse.click(at[0], at[1]);
  a = await marksOf(page, ids.ptA);
  check("editing the prompts keeps the marks, dimmed and noted as from the last run",
    sameList(a.frames, report.frames) && a.marks.every((k) => k.opacity < 1 && /prompts edited since/.test(k.title)), a.marks);
  await page.mouse.click(at[0], at[1]); // a click on the point removes it: the prompts of the first run again

  // 5. An uploaded still replaces editor B's frames: its marks go, editor A keeps them.
  const [chooser] = await Promise.all([page.waitForEvent("filechooser"),
    page.locator('[data-check="B"]').getByRole("button", { name: "upload frame" }).click()]);
  await chooser.setFiles(args.image);
  await page.waitForFunction((id) => window.app.graph.getNodeById(id).univsEditor.frames.length === 1, ids.ptB);
  const bUp = await marksOf(page, ids.ptB);
  a = await marksOf(page, ids.ptA);
  check("an uploaded still drops that editor's marks (only)", !bUp.stripVisible && !bUp.marks.length && a.marks.length > 0,
    { B: bUp, A: a.frames });

  // 6. Another clip (frames 0..19 instead of 0..29): the new frames drop the marks as soon as they arrive, and the
  //    editors then show what the new run reports (nothing weak there: the weak frames of the first run lie past 19).
  await page.evaluate(([id, a]) => {
    const g = window.app.graph;
    const batch = g.nodes.find((n) => n.type === "ImageFromBatch");
    batch.widgets.find((w) => w.name === "length").value = 20;
    const node = g.getNodeById(id);
    const previous = node.onExecuted;
    window.__univsMarksAfterFrames = [];
    node.onExecuted = function (output) { // record editor A's marks right after its new frames landed
      previous.apply(this, arguments);
      if (output?.univs_frames) window.__univsMarksAfterFrames.push(node.univsEditor.weak.size);
    };
  }, [ids.ptA]);
  const other = await queueAndWait(page, timeoutMs);
  await nextFrames(page);
  const report2 = other.outputs[String(ids.track)]?.univs_weak?.[0];
  const afterFrames = await page.evaluate(() => window.__univsMarksAfterFrames);
  a = await marksOf(page, ids.ptA);
  console.log(`other clip: ${other.status} in ${other.seconds} s; weak frames ${JSON.stringify(report2?.frames)}`);
  check("another clip drops the marks when its frames arrive; the editor then shows the new run's marks only",
    other.status === "success" && sameList(afterFrames, [0]) && report2 && sameList(report2.size, [320, 240, 20])
      && a.shown === 20 && sameList(a.frames, report2.frames) && !report.frames.some((f) => f >= 20 && a.frames.includes(f))
      && a.stripVisible === report2.frames.length > 0,
    { status: other.status, error: other.error, afterFrames, reported: report2?.frames, A: a });
  await page.screenshot({ path: path.join(args.out, "editor_weak_other_clip.png"), clip: shotBox });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.out, { recursive: true });
  const checks = [];
  const check = (name, ok, detail) => {
    detail = JSON.parse(JSON.stringify(detail ?? null, (k, v) => (typeof v === "string" && v.length > 300 ? `${v.slice(0, 300)}...` : v)));
    checks.push({ name, ok: !!ok, detail });
    console.log(`${ok ? "PASS" : "FAIL"} ${name}${ok ? "" : `: ${JSON.stringify(detail)}`}`);
  };
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const net = trackRequests(page);
    await openComfy(page, args.url, { nodeType: NODE });
    await net.idle();
    await closeDialogs(page);
    if (!args.image) await drawStill(page, (args.image = path.join(args.out, "still.png")));
    const [W, H] = pngSize(args.image);
    const dismiss = page.getByTestId("error-overlay-dismiss");
    if (await dismiss.isVisible()) await dismiss.click();

    // 1. A saved workflow without a frame: the placeholder, and no prompt drawn over it (frame 0 is what the
    //    editor shows while it has no frames).
    await load(page, net, workflow({}, 0));
    let info = await editorInfo(page);
    let px = await probePixel(page, 100, 80);
    check("no frame: nothing drawn at the saved click", !info.hasImage && !px.isObjectColour, { info, px });
    await page.screenshot({ path: path.join(args.out, "editor_no_frame.png") });
    await load(page, net, workflow());

    // 2. Upload a still the way a user does: the "upload frame" button opens the file chooser.
    const uploaded = page.waitForResponse((r) => r.url().includes("/upload/image") && r.request().method() === "POST",
      { timeout: 15_000 });
    const chooser = page.waitForEvent("filechooser");
    await page.getByRole("button", { name: "upload frame" }).click();
    await (await chooser).setFiles(args.image);
    const res = await uploaded.catch(() => null);
    const body = res ? await res.json() : {};
    await page.waitForFunction((type) => {
      const ed = window.app.graph.nodes.find((n) => n.type === type).univsEditor;
      return ed.image?.complete && ed.image.naturalWidth > 0;
    }, NODE);
    await nextFrames(page);
    info = await editorInfo(page);
    check("upload goes through POST /upload/image into input/univs", res?.ok() && body.subfolder === "univs" && body.type === "input", body);
    check("uploaded still is frame 12 (the node's frame_index)", info.frame === 12 && info.upload?.frame === 12 && /^frame 12\b/.test(info.frameLabel), info);
    check("properties hold a reference, not a data URL",
      info.upload && !info.upload.url && info.upload.filename === body.name && info.upload.subfolder === "univs"
        && info.upload.type === "input" && JSON.stringify(info.upload.size) === JSON.stringify([W, H, 1]) && info.propertiesBytes < 500,
      { upload: info.upload, propertiesBytes: info.propertiesBytes });
    const view = await fetch(`${args.url}/view?filename=${encodeURIComponent(body.name)}&subfolder=univs&type=input`);
    check("GET /view serves the uploaded still", view.ok, view.status);
    if (args.inputDir && body.name) {
      const file = path.join(args.inputDir, "univs", body.name);
      check("file exists in ComfyUI's input/univs/", fs.existsSync(file), file);
    }
    px = await probePixel(page, 100, 80);
    check("saved frame-12 click is drawn on the still", px.isObjectColour, px);

    // 3. Click on the still: the point is stored under frame "12".
    const target = [220, 60];
    const at = await page.evaluate(([type, x, y]) => {
      const ed = window.app.graph.nodes.find((n) => n.type === type).univsEditor;
      const r = ed.canvas.getBoundingClientRect();
      const { s, ox, oy } = ed.layout();
      return [r.left + ((ox + x * s) * r.width) / ed.canvas.width, r.top + ((oy + y * s) * r.height) / ed.canvas.height];
    }, [NODE, ...target]);
    await page.mouse.click(at[0], at[1]);
    await page.waitForFunction((type) => {
      const n = window.app.graph.nodes.find((x) => x.type === type);
      return JSON.parse(n.widgets.find((w) => w.name === "editor").value).objects[0].frames["12"].points.length === 2;
    }, NODE);
    info = await editorInfo(page);
    const pts = info.state.objects?.[0]?.frames?.["12"]?.points ?? [];
    const clicked = pts.find((p) => Math.abs(p[0] - target[0]) <= 2 && Math.abs(p[1] - target[1]) <= 2 && p[2] === 1);
    check("click stored as a positive point under frame \"12\"", clicked && Object.keys(info.state.objects[0].frames).join() === "12", info.state);

    // 4. The JSON widget: hidden, but still serialized in place and sent with the prompt.
    check("editor JSON widget is hidden", info.widgetHidden && info.widgetVisible === false && info.widgetInLayout === false, info);
    check("widget order unchanged", info.widgetNames.slice(0, 4).join() === "frame_index,object_id,label,editor", info.widgetNames);
    check("state serialized at widgets_values[3] and sent as input 'editor'",
      info.serializedWidgets[3] === JSON.stringify(info.state) && info.promptEditorInput === JSON.stringify(info.state),
      { serialized: info.serializedWidgets, prompt: info.promptEditorInput });
    const box = await page.evaluate((type) => {
      const n = window.app.graph.nodes.find((x) => x.type === type);
      const r = n.univsEditor.root.getBoundingClientRect();
      return { x: r.left, y: r.top, width: r.width, height: r.height };
    }, NODE);
    await page.screenshot({ path: path.join(args.out, "editor_frame12.png") });
    await page.screenshot({
      path: path.join(args.out, "editor_frame12_node.png"),
      clip: { x: Math.max(0, box.x - 20), y: Math.max(0, box.y - 260), width: box.width + 40, height: box.height + 280 },
    });

    // 5. Save and load again: the still comes back from the reference.
    const saved = await page.evaluate(() => window.app.graph.serialize());
    const savedNode = saved.nodes.find((n) => n.type === NODE);
    check("saved workflow carries the reference only", JSON.stringify(savedNode.properties).length < 500 && !JSON.stringify(saved).includes("data:image"),
      savedNode.properties);
    await load(page, net, saved);
    await page.waitForFunction((type) => window.app.graph.nodes.find((n) => n.type === type).univsEditor.image?.complete, NODE);
    info = await editorInfo(page);
    px = await probePixel(page, 100, 80);
    check("reloaded workflow shows the referenced still as frame 12 with its clicks",
      info.hasImage && info.frame === 12 && info.frames[0].url.includes("/view?") && px.isObjectColour, { info, px });

    // 6. An old workflow with the still inline as a data URL.
    const dataUrl = `data:image/png;base64,${fs.readFileSync(args.image).toString("base64")}`;
    await load(page, net, workflow({ univs_upload: { url: dataUrl, size: [W, H, 1], frame: 12 } }));
    await page.waitForFunction((type) => window.app.graph.nodes.find((n) => n.type === type).univsEditor.image?.complete, NODE);
    info = await editorInfo(page);
    px = await probePixel(page, 100, 80);
    check("old workflow with a data URL still shows its still and click", info.hasImage && info.frame === 12 && px.isObjectColour, { info, px });

    // 7. A reference whose file is gone: placeholder, no prompts drawn.
    const gone = { filename: "does-not-exist.png", subfolder: "univs", type: "input", size: [W, H, 1], frame: 12 };
    await load(page, net, workflow({ univs_upload: gone }));
    await page.waitForFunction((type) => /not found/.test(window.app.graph.nodes.find((n) => n.type === type).univsEditor.frameLabel.textContent), NODE);
    info = await editorInfo(page);
    px = await probePixel(page, 100, 80);
    check("missing referenced file: placeholder, no click drawn", !info.hasImage && !px.isObjectColour, { frameLabel: info.frameLabel, px });
    await page.screenshot({ path: path.join(args.out, "editor_missing_file.png") });

    // 8. Weak-frame marks from a run of the built-in model on the sample clip.
    if (args.run) await checkWeakMarks(page, net, args, check);
  } catch (e) {
    // A broken editor usually shows up as a condition that never becomes true: report it as a failed check.
    check("check ran to the end", false, String(e.message ?? e).split("\n")[0]);
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(args.out, "editor_report.json"), JSON.stringify(checks, null, 2));
  const failed = checks.filter((c) => !c.ok).length;
  console.log(failed ? `${failed} of ${checks.length} checks FAILED` : `all ${checks.length} checks passed`);
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(2);
});
