#!/usr/bin/env node
// Browser check of the UniVS prompt editor (the canvas on "UniVS Prompt Target"):
//  - saved clicks are not drawn over the "No frame yet" placeholder,
//  - "upload frame" with frame_index 12 stores the still as frame 12 and the saved frame-12 click shows on it,
//  - a click lands in the state JSON under frame "12",
//  - the still goes through POST /upload/image (input/univs/) and the node keeps only a reference,
//  - the reference survives a save/load round trip, old workflows with a data URL still show their still,
//  - the JSON `editor` widget is hidden but serialized and sent with the prompt.
//
//   node check_editor.mjs http://127.0.0.1:8188 out/ [--image still.png] [--input-dir ComfyUI/input]
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
  const opts = { image: null, inputDir: null };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--image") opts.image = argv[++i];
    else if (argv[i] === "--input-dir") opts.inputDir = argv[++i];
    else pos.push(argv[i]);
  }
  if (pos.length !== 2) {
    console.error("usage: node check_editor.mjs COMFY_URL OUT_DIR [--image STILL.png] [--input-dir COMFY_INPUT_DIR]");
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
