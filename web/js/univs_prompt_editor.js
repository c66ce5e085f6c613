// UniVS prompt editor for the "UniVS Prompt Target" node (plain ES module, no build step).
//
// Shows one video frame (frames come from the node's optional `image` input after a queue, or from a picture
// uploaded into ComfyUI's input folder), a frame scrubber, and lets the user click positive / negative points and
// drag boxes for several objects, each in the colour the engine uses for that object id. The state is written as
// JSON into the node's `editor` widget, so it is saved inside the workflow and sent to the backend with the prompt.
//
// Controls: click = positive point, right-click or shift+click = negative point, drag = box,
// click on an existing point of the active object = remove it.
//
// After a run, the frames where the tracking most likely needs a correction ("weak": an object's confidence falls
// below half its usual level, or it is lost and found again) are marked under the scrubber, in the objects' colours.
// "UniVS Rotoscope: Track Objects" reports them (ui `univs_weak`); the marks go to every Prompt Target editor up its
// `prompts` chain. Clicking a mark shows that frame. Marks are dropped when the editor's frames change (another
// video, an uploaded still) and dimmed once the prompts are edited (they describe the last run).

const NODE_ID = "UniVS_PromptTarget";
const STATE_WIDGET = "editor";
const UPLOAD_SUBFOLDER = "univs";
const TRACK_NODE_ID = "UniVS_PropagateMasks";
const MODE_MUTED = 2, MODE_BYPASS = 4;

async function getApp() {
  if (window.comfyAPI?.app?.app) return window.comfyAPI.app.app;
  return (await import("../../../scripts/app.js")).app;
}

async function getApi() {
  if (window.comfyAPI?.api?.api) return window.comfyAPI.api.api;
  return (await import("../../../scripts/api.js")).api;
}

// Same colours as univs_engine.results.object_color (golden-ratio hue walk), so the editor matches the legend.
export function objectColor(id) {
  const h = (0.13 + id * 0.618033988749895) % 1.0;
  const s = 0.65 + (0.3 * ((id * 7) % 4)) / 3.0;
  const v = 0.95 - (0.2 * ((id * 3) % 3)) / 2.0;
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return `rgb(${rgb.map((c) => Math.round(c * 255)).join(",")})`;
}

function emptyState() {
  return { version: 1, objects: [] };
}

export function parseState(text) {
  if (!text || !String(text).trim()) return emptyState();
  try {
    const s = JSON.parse(text);
    if (s && Array.isArray(s.objects)) return { version: 1, objects: s.objects };
  } catch (e) {
    console.warn("[UniVS] editor state is not valid JSON; starting empty", e);
  }
  return emptyState();
}

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  if (props.style) Object.assign(e.style, props.style);
  for (const c of children) e.append(c);
  return e;
}

class PromptEditor {
  constructor(node, api) {
    this.node = node;
    this.api = api;
    this.widget = node.widgets?.find((w) => w.name === STATE_WIDGET);
    this.state = parseState(this.widget?.value);
    this.frames = []; // [{frame, url}]
    this.size = null; // [W, H, T] of the original video
    this.frameIdx = 0; // index into this.frames
    this.image = null;
    this.activeId = this.state.objects[0]?.id ?? 1;
    this.drag = null;
    this.weak = new Map(); // tracking node -> its ui `univs_weak` reports (see nodes/select.py::weak_report)
    this.weakStale = false; // the prompts were edited after the run that reported the marks
    this.framesKey = ""; // the frames the last run showed (their files are named by a hash of the pixels)
    this.buildDom();
    this.restoreUpload();
    this.refreshObjects();
    this.draw();
  }

  buildDom() {
    const bar = { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap", fontSize: "11px" };
    this.objectSelect = el("select", { title: "Active object (id: label)", onchange: () => {
      this.activeId = Number(this.objectSelect.value);
      this.labelInput.value = this.obj(this.activeId)?.label ?? "";
      this.draw(); } });
    this.labelInput = el("input", { placeholder: "label", title: "Label of the active object", size: 8,
      onchange: () => { const o = this.obj(this.activeId, true); o.label = this.labelInput.value; this.save(); this.refreshObjects(); } });
    const btn = (text, title, fn) => el("button", { textContent: text, title, onclick: (e) => { e.preventDefault(); fn(); } });
    this.fileInput = el("input", { type: "file", accept: "image/*", style: { display: "none" },
      onchange: () => {
        const file = this.fileInput.files?.[0];
        this.fileInput.value = ""; // so picking the same file again still fires onchange
        this.upload(file);
      } });
    const tools = el("div", { style: bar }, [
      this.objectSelect, this.labelInput,
      btn("+ object", "Add a new object", () => this.newObject()),
      btn("clear frame", "Remove the active object's clicks and box on this frame", () => this.clearFrame()),
      btn("delete object", "Remove the active object everywhere", () => this.deleteObject()),
      btn("upload frame", "Use a picture as frame `frame_index` to click on (its size must be the video size)", () => this.fileInput.click()),
      this.fileInput,
    ]);
    this.canvas = el("canvas", { width: 512, height: 288, style: { width: "100%", flex: "1 1 auto", minHeight: "120px",
      background: "#222", cursor: "crosshair", borderRadius: "4px" } });
    this.slider = el("input", { type: "range", min: 0, max: 0, value: 0, style: { flex: "1" },
      oninput: () => this.showFrame(Number(this.slider.value)) });
    this.frameLabel = el("span", { textContent: "no frames: queue once with `image` connected, or upload a frame" });
    // Weak-frame marks, one button per scrubber position; inset by half the slider thumb so a mark sits under it.
    this.marks = el("div", { className: "univs-weak-marks", hidden: true, role: "group",
      style: { position: "relative", height: "12px", margin: "0 8px" } });
    this.marks.setAttribute("aria-label", "Weak frames of the last run");
    const track = el("div", { style: { flex: "1", display: "flex", flexDirection: "column", minWidth: "80px" } },
      [this.slider, this.marks]);
    const scrub = el("div", { style: bar }, [track, this.frameLabel]);
    this.info = el("div", { style: { fontSize: "10px", opacity: 0.7 },
      textContent: "click = positive · right/shift-click = negative · drag = box · click a point to remove it" });
    this.root = el("div", { style: { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%" } },
      [tools, this.canvas, scrub, this.info]);
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  // ---------------------------------------------------------------- state helpers
  currentFrame() {
    return this.frames[this.frameIdx]?.frame ?? 0;
  }

  obj(id, create = false) {
    let o = this.state.objects.find((x) => x.id === id);
    if (!o && create) {
      o = { id, label: "", frames: {} };
      this.state.objects.push(o);
      this.state.objects.sort((a, b) => a.id - b.id);
    }
    return o;
  }

  cues(create = false) {
    const o = this.obj(this.activeId, create);
    if (!o) return null;
    const k = String(this.currentFrame());
    if (!o.frames[k] && create) o.frames[k] = { points: [], box: null };
    return o.frames[k] || null;
  }

  newObject() {
    const ids = this.state.objects.map((o) => o.id);
    this.activeId = (ids.length ? Math.max(...ids) : 0) + 1;
    this.obj(this.activeId, true);
    this.save();
    this.refreshObjects();
    this.draw();
  }

  clearFrame() {
    const o = this.obj(this.activeId);
    if (o) delete o.frames[String(this.currentFrame())];
    this.save();
    this.draw();
  }

  deleteObject() {
    this.state.objects = this.state.objects.filter((o) => o.id !== this.activeId);
    this.activeId = this.state.objects[0]?.id ?? 1;
    this.save();
    this.refreshObjects();
    this.draw();
  }

  save() {
    // Drop frames without cues so the backend never sees empty prompts.
    for (const o of this.state.objects) {
      for (const [k, c] of Object.entries(o.frames)) if (!c.points?.length && !c.box) delete o.frames[k];
    }
    const text = this.state.objects.length ? JSON.stringify(this.state) : "";
    if (this.weak.size && text !== (this.widget?.value ?? "")) {
      this.weakStale = true; // still useful (where else to correct), but from the run before this edit
      this.renderMarks();
    }
    if (this.widget) {
      this.widget.value = text;
      this.widget.callback?.(text);
    }
    this.node.setDirtyCanvas?.(true, true);
  }

  refreshObjects() {
    if (!this.state.objects.some((o) => o.id === this.activeId)) this.obj(this.activeId, false);
    const ids = new Set(this.state.objects.map((o) => o.id));
    ids.add(this.activeId);
    this.objectSelect.replaceChildren(...[...ids].sort((a, b) => a - b).map((id) => {
      const o = this.obj(id);
      const opt = el("option", { value: id, textContent: `${id}${o?.label ? ": " + o.label : ""}` });
      opt.style.color = objectColor(id);
      return opt;
    }));
    this.objectSelect.value = String(this.activeId);
    this.labelInput.value = this.obj(this.activeId)?.label ?? "";
  }

  // ---------------------------------------------------------------- frames
  // Frame to show first: the node's frame_index, else the first frame where the active object has cues.
  preferredFrame() {
    const fi = this.node.widgets?.find((w) => w.name === "frame_index")?.value;
    const o = this.obj(this.activeId);
    const cueFrames = o ? Object.keys(o.frames).map(Number).sort((a, b) => a - b) : [];
    if (cueFrames.length && !cueFrames.includes(fi)) return cueFrames[0];
    return Number.isFinite(fi) ? fi : 0;
  }

  setFrames(frames, size) {
    const first = !this.frames.length;
    const target = first ? this.preferredFrame() : this.currentFrame();
    this.frames = frames;
    if (size) this.size = size;
    this.slider.max = Math.max(0, frames.length - 1);
    this.renderMarks();
    this.showFrame(this.nearestIndex(target));
  }

  // Index of the shown frame nearest to video frame `target` (thumbnails may skip frames on long clips).
  nearestIndex(target) {
    let best = 0;
    this.frames.forEach((f, i) => {
      if (Math.abs(f.frame - target) < Math.abs(this.frames[best].frame - target)) best = i;
    });
    return best;
  }

  // ---------------------------------------------------------------- weak-frame marks
  setWeak(source, reports) {
    this.weak.set(source, reports.filter((r) => r && Array.isArray(r.objects)));
    this.weakStale = false;
    this.renderMarks();
    this.showFrame(this.frameIdx);
  }

  clearWeak() {
    this.weak.clear();
    this.renderMarks();
  }

  // frame -> [{id, label, confidence, level}] over all reports; and the reported video's frame count.
  weakFrames() {
    const byFrame = new Map();
    let total = 0;
    for (const reports of this.weak.values()) {
      for (const r of reports) {
        total = Math.max(total, r.size?.[2] ?? 0);
        for (const o of r.objects) {
          for (const [f, c] of o.weak || []) {
            if (!byFrame.has(f)) byFrame.set(f, []);
            byFrame.get(f).push({ id: o.id, label: o.label, confidence: c, level: o.level });
          }
        }
      }
    }
    return { byFrame, total };
  }

  // "frame 23: weak (1 car: confidence 0.31, usual 0.8)"
  static weakText(frame, objs) {
    const num = (v) => (v == null ? "?" : String(Number(Number(v).toPrecision(2))));
    const parts = objs.map((o) => `${o.id}${o.label ? " " + o.label : ""}: `
      + (o.confidence == null ? `lost (usual confidence ${num(o.level)})` : `confidence ${num(o.confidence)}, usual ${num(o.level)}`));
    return `frame ${frame}: weak (${parts.join("; ")})`;
  }

  renderMarks() {
    const { byFrame, total } = this.weakFrames();
    this.marks.replaceChildren();
    this.marks.hidden = !byFrame.size;
    if (!byFrame.size) return;
    const n = this.frames.length;
    // The marks can move the scrubber only when the editor shows the clip that was tracked.
    const navigable = n > 1 && (!total || !this.size?.[2] || this.size[2] === total);
    const groups = new Map(); // scrubber position -> the weak frames it stands for
    for (const f of [...byFrame.keys()].sort((a, b) => a - b)) {
      const idx = navigable ? this.nearestIndex(f) : null;
      const pos = navigable ? idx / (n - 1) : total > 1 ? f / (total - 1) : 0;
      const key = navigable ? idx : f;
      if (!groups.has(key)) groups.set(key, { idx, pos, frames: [] });
      groups.get(key).frames.push(f);
    }
    const note = (navigable ? "" : " (not among the editor's frames: connect `image` and queue)")
      + (this.weakStale ? " (from the last run; prompts edited since)" : "");
    for (const g of groups.values()) {
      const lines = g.frames.map((f) => PromptEditor.weakText(f, byFrame.get(f)));
      const ids = [...new Set(g.frames.flatMap((f) => byFrame.get(f).map((o) => o.id)))];
      const cols = ids.map((id) => objectColor(id));
      const label = lines.join("; ") + note;
      const mark = el("button", {
        className: "univs-weak-mark",
        title: lines.join("\n") + note,
        style: {
          position: "absolute", left: `${g.pos * 100}%`, top: "1px", width: "7px", height: "10px", padding: "0",
          transform: "translateX(-50%)", border: "1px solid #000", borderRadius: "2px",
          background: cols.length > 1 ? `linear-gradient(${cols.join(",")})` : cols[0],
          opacity: this.weakStale ? "0.45" : "1", cursor: navigable ? "pointer" : "default",
        },
        onclick: (e) => {
          e.preventDefault();
          if (g.idx != null) this.showFrame(g.idx);
        },
      });
      mark.setAttribute("aria-label", label);
      mark.dataset.frames = g.frames.join(",");
      if (g.idx != null) mark.dataset.index = String(g.idx);
      else mark.setAttribute("aria-disabled", "true");
      this.marks.append(mark);
    }
    this.highlightMark();
  }

  highlightMark() {
    for (const m of this.marks.children) {
      const here = m.dataset.index === String(this.frameIdx);
      m.style.outline = here ? "2px solid #fff" : "";
      if (here) m.setAttribute("aria-current", "true");
      else m.removeAttribute("aria-current");
    }
  }

  showFrame(i) {
    this.frameIdx = Math.max(0, Math.min(i, this.frames.length - 1));
    this.slider.value = this.frameIdx;
    const f = this.frames[this.frameIdx];
    if (!f) return this.draw();
    const total = this.size?.[2] > 1 ? ` / ${this.size[2] - 1}` : "";
    this.frameLabel.textContent = `frame ${f.frame}${total}`;
    const weak = this.weak.size ? this.weakFrames().byFrame.get(f.frame) : null;
    if (weak) this.frameLabel.textContent += " · weak";
    this.frameLabel.title = weak ? PromptEditor.weakText(f.frame, weak) : "";
    this.highlightMark();
    const img = new Image();
    // Only the frame still selected may land: scrubbing fires loads that can finish out of order.
    const current = () => this.frames[this.frameIdx] === f;
    img.onload = () => {
      if (!current()) return;
      this.image = img;
      if (!this.size) this.size = [img.naturalWidth, img.naturalHeight, 1];
      this.draw();
    };
    // A referenced file may be missing (workflow opened on another machine): show the placeholder, not a stale frame.
    img.onerror = () => {
      if (!current()) return;
      this.image = null;
      this.frameLabel.textContent = `frame ${f.frame}: image not found`;
      this.draw();
    };
    img.src = f.url;
  }

  viewUrl({ filename, subfolder = "", type = "input" }) {
    return this.api.apiURL(`/view?filename=${encodeURIComponent(filename)}&subfolder=${encodeURIComponent(subfolder)}&type=${type}`);
  }

  // Older workflows carry the still inline as a data URL (`url`); newer ones only a reference to ComfyUI's input folder.
  restoreUpload() {
    const upload = this.node.properties?.univs_upload;
    if (!upload?.url && !upload?.filename) return;
    this.setFrames([{ frame: upload.frame ?? 0, url: upload.url ?? this.viewUrl(upload) }], upload.size);
  }

  onExecuted(output) {
    const frames = output?.univs_frames;
    if (!frames?.length) return;
    // Other frames than the last run's: another video, so the marks are about a clip no longer shown. (A cached
    // run replays the same frames, in any order with the tracking node's marks: those stay.)
    const key = frames.map((f) => `${f.frame}:${f.subfolder}/${f.filename}`).join("|");
    if (this.framesKey && key !== this.framesKey) this.clearWeak();
    this.framesKey = key;
    this.setFrames(frames.map((f) => ({ frame: f.frame, url: this.viewUrl(f) })), output.univs_size);
  }

  // The file goes to ComfyUI's input folder, so the workflow keeps a small reference instead of the picture.
  async upload(file) {
    if (!file) return;
    // The clicks on the still belong to the node's frame_index, not to whatever the scrubber showed before.
    const frame = Number(this.node.widgets?.find((w) => w.name === "frame_index")?.value) || 0;
    try {
      const bitmap = await createImageBitmap(file); // also rejects files the browser cannot show
      const size = [bitmap.width, bitmap.height, 1];
      bitmap.close();
      const body = new FormData();
      body.append("image", file);
      body.append("type", "input");
      body.append("subfolder", UPLOAD_SUBFOLDER);
      const res = await this.api.fetchApi("/upload/image", { method: "POST", body });
      if (!res.ok) throw new Error(`HTTP ${res.status} ${await res.text()}`);
      const { name, subfolder, type } = await res.json();
      const upload = { filename: name, subfolder, type, frame, size };
      this.node.properties = this.node.properties || {};
      this.node.properties.univs_upload = upload;
      this.frames = []; // a new source: start from frame_index again
      this.clearWeak(); // the marks were about the video, not this still
      this.restoreUpload();
    } catch (e) {
      console.error("[UniVS] frame upload failed", e);
      this.frameLabel.textContent = `upload failed: ${e.message ?? e}`;
    }
  }

  // ---------------------------------------------------------------- geometry
  layout() {
    const c = this.canvas;
    const W = this.size?.[0] || 512, H = this.size?.[1] || 288;
    const s = Math.min(c.width / W, c.height / H);
    return { s, ox: (c.width - W * s) / 2, oy: (c.height - H * s) / 2, W, H };
  }

  toImage(e) {
    const r = this.canvas.getBoundingClientRect();
    const cx = ((e.clientX - r.left) * this.canvas.width) / r.width;
    const cy = ((e.clientY - r.top) * this.canvas.height) / r.height;
    const { s, ox, oy, W, H } = this.layout();
    return [Math.max(0, Math.min(W, (cx - ox) / s)), Math.max(0, Math.min(H, (cy - oy) / s))];
  }

  onDown(e) {
    if (!this.image) return;
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.drag = { start: this.toImage(e), end: null, negative: e.button === 2 || e.shiftKey };
  }

  onMove(e) {
    if (!this.drag) return;
    const p = this.toImage(e);
    const { s } = this.layout();
    const [x0, y0] = this.drag.start;
    if (Math.hypot((p[0] - x0) * s, (p[1] - y0) * s) > 5) this.drag.end = p;
    this.draw();
  }

  onUp(e) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    if (d.end) {
      const [x0, y0] = d.start, [x1, y1] = d.end;
      const box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map((v) => Math.round(v));
      if (box[2] > box[0] && box[3] > box[1]) this.cues(true).box = box;
    } else {
      // a click names a pixel: 0 <= x < W, 0 <= y < H (the backend refuses x = W; boxes may end at W)
      const { s, W, H } = this.layout();
      const x = Math.min(W - 1, Math.round(d.start[0])), y = Math.min(H - 1, Math.round(d.start[1]));
      const c = this.cues(true);
      const hit = c.points.findIndex((p) => Math.hypot((p[0] - x) * s, (p[1] - y) * s) < 7);
      if (hit >= 0) c.points.splice(hit, 1);
      else c.points.push([x, y, d.negative ? 0 : 1]);
    }
    this.save();
    this.refreshObjects();
    this.draw();
  }

  // ---------------------------------------------------------------- drawing
  draw() {
    const c = this.canvas;
    const r = c.getBoundingClientRect();
    if (r.width > 0 && r.height > 0) {
      const w = Math.round(r.width), h = Math.round(r.height);
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    }
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const { s, ox, oy } = this.layout();
    if (!this.image) {
      // Prompts are in frame pixels: without the frame they would float at meaningless places.
      g.fillStyle = "#888";
      g.font = "12px sans-serif";
      g.fillText("No frame yet: connect `image` and queue, or upload a frame.", 10, 20);
      return;
    }
    g.drawImage(this.image, ox, oy, this.layout().W * s, this.layout().H * s);
    const k = String(this.currentFrame());
    for (const o of this.state.objects) {
      const cues = o.frames[k];
      if (!cues) continue;
      const col = objectColor(o.id);
      const active = o.id === this.activeId;
      g.lineWidth = active ? 2.5 : 1.5;
      g.strokeStyle = col;
      if (cues.box) {
        const [x0, y0, x1, y1] = cues.box;
        g.setLineDash(active ? [] : [4, 3]);
        g.strokeRect(ox + x0 * s, oy + y0 * s, (x1 - x0) * s, (y1 - y0) * s);
        g.setLineDash([]);
        g.fillStyle = col;
        g.font = "bold 12px sans-serif";
        g.fillText(`${o.id}${o.label ? " " + o.label : ""}`, ox + x0 * s + 3, oy + y0 * s + 13);
      }
      for (const [x, y, pos] of cues.points || []) {
        const px = ox + x * s, py = oy + y * s;
        g.beginPath();
        g.arc(px, py, active ? 6 : 5, 0, Math.PI * 2);
        g.fillStyle = pos ? col : "rgba(0,0,0,0.6)";
        g.fill();
        g.strokeStyle = pos ? "#000" : col;
        g.stroke();
        if (!pos) {
          g.beginPath();
          g.moveTo(px - 3, py - 3); g.lineTo(px + 3, py + 3);
          g.moveTo(px + 3, py - 3); g.lineTo(px - 3, py + 3);
          g.stroke();
        }
      }
    }
    if (this.drag?.end) {
      const [x0, y0] = this.drag.start, [x1, y1] = this.drag.end;
      g.strokeStyle = objectColor(this.activeId);
      g.setLineDash([5, 4]);
      g.strokeRect(ox + Math.min(x0, x1) * s, oy + Math.min(y0, y1) * s, Math.abs(x1 - x0) * s, Math.abs(y1 - y0) * s);
      g.setLineDash([]);
    }
  }
}

// The Prompt Target nodes whose prompts reach `node` (a tracking node): up the `prompts` links, through chained
// Prompt Target / Text Refer nodes and Reroutes. A bypassed Prompt Target passes the prompts on but adds none.
// Links across a subgraph's boundary are not followed (an editor and its tracking node share a graph).
export function upstreamPromptTargets(node) {
  const found = [];
  const seen = new Set([node]);
  const source = (n) => {
    const inputs = n.inputs || [];
    const slot = n.type === "Reroute" ? 0 : inputs.findIndex((i) => i.name === "prompts");
    return slot >= 0 && slot < inputs.length ? n.getInputNode?.(slot) ?? null : null;
  };
  for (let n = source(node); n && !seen.has(n); n = source(n)) {
    seen.add(n);
    if (n.comfyClass === NODE_ID && n.univsEditor && n.mode !== MODE_BYPASS && n.mode !== MODE_MUTED) found.push(n);
  }
  return found;
}

function watchTrackNode(node) {
  const previous = node.onExecuted;
  node.onExecuted = function (output) {
    previous?.apply(this, arguments);
    const reports = output?.univs_weak;
    if (!Array.isArray(reports)) return;
    const source = `${node.graph?.id ?? ""}:${node.id}`;
    for (const target of upstreamPromptTargets(node)) target.univsEditor.setWeak(source, reports);
  };
}

(async () => {
  const app = await getApp();
  const api = await getApi();
  app.registerExtension({
    name: "univs.PromptEditor",
    async nodeCreated(node) {
      if (node?.comfyClass === TRACK_NODE_ID) return watchTrackNode(node);
      if (node?.comfyClass !== NODE_ID) return;
      const editor = new PromptEditor(node, api);
      node.univsEditor = editor;
      // The JSON is written by the canvas, never typed. Hidden, it is still serialized (widget values are
      // positional in saved workflows) and sent with the prompt; options.hidden is what Vue-rendered nodes read.
      if (editor.widget) {
        editor.widget.hidden = true;
        (editor.widget.options ??= {}).hidden = true;
      }
      node.addDOMWidget("univs_prompt_editor", "univs_prompt_editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 260,
        getValue: () => undefined,
        setValue: () => {},
      });
      const size = node.computeSize?.() || [400, 400];
      node.setSize?.([Math.max(size[0], 420), Math.max(size[1], 480)]);
      const previous = node.onExecuted;
      node.onExecuted = function (output) {
        previous?.apply(this, arguments);
        editor.onExecuted(output);
      };
      // The state widget is filled after creation when a workflow is loaded.
      const previousConfigure = node.onConfigure;
      node.onConfigure = function () {
        previousConfigure?.apply(this, arguments);
        editor.state = parseState(editor.widget?.value);
        editor.activeId = editor.state.objects[0]?.id ?? 1;
        editor.restoreUpload();
        editor.refreshObjects();
        editor.draw();
      };
    },
  });
})();
