"""Make each template's thumbnail (workflows/<name>.jpg) from what the template really produces.

Runs every template on a ComfyUI server with this pack (through the workflow client of ../shared/comfyui), then
takes the middle frame of the video it saves (Save Video), else a middle frame of its first image preview; a
template without either (the streamed long clip) shows its exported matte cut out of the sample frame over a
checkerboard. A template that cannot run here (extra.univs_ci = "validate-only": its generative models are not
shipped) gets a rendered picture of its graph instead: the nodes at their places, UniVS nodes in blue, model
loaders in orange, the wires, and a caption naming the model files it needs.

    python tools/make_template_thumbnails.py --server http://127.0.0.1:8188 --comfyui /path/to/ComfyUI [--only TEXT]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT.parent / "shared" / "comfyui" / "run_workflow.py"
SIZE = (512, 384)


def run(server: str, template: Path, dest: Path) -> str:
    cmd = [sys.executable, str(CLIENT), "--server", server, "--download", str(dest), str(template)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{template.name}: the run failed (rc {done.returncode})\n{done.stdout[-2000:]}{done.stderr}")
    return done.stdout


def middle_video_frame(dest: Path) -> Image.Image | None:
    """The middle frame of the first video the run saved (files are downloaded as <node>_<name>.<ext>)."""
    import av

    videos = sorted(f for f in dest.iterdir() if f.suffix.lower() in (".mp4", ".webm", ".mkv", ".mov"))
    if not videos:
        return None
    with av.open(str(videos[0])) as c:
        frames = [f.to_image() for f in c.decode(video=0)]
    return frames[len(frames) // 2].convert("RGB") if frames else None


def middle_preview(dest: Path) -> Image.Image | None:
    """The middle frame of the first preview node's images (files are saved as <node>_<name>.png)."""
    files = sorted(dest.glob("*.png"))
    if not files:
        return None
    first_node = files[0].name.split("_", 1)[0]
    frames = [f for f in files if f.name.split("_", 1)[0] == first_node]
    return Image.open(frames[len(frames) // 2]).convert("RGB")


def matte_cutout(log: str, comfyui: Path) -> Image.Image:
    """The middle PNG matte the run wrote, as alpha over the sample's frame, on a checkerboard."""
    import av

    folders = re.findall(r"output folder:\\n([^\"\\]+)", log)
    mattes = [comfyui / "output" / f for f in folders if (comfyui / "output" / f).is_dir()]
    if not mattes:
        raise SystemExit("no preview image and no PNG matte folder in the run's output")
    pngs = sorted(mattes[0].glob("*.png"))
    k = len(pngs) // 2
    alpha = np.asarray(Image.open(pngs[k]), dtype=np.float32)
    alpha = alpha / (65535.0 if alpha.max() > 255 else 255.0)
    with av.open(str(comfyui / "input" / "univs_sample.mp4")) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == int(pngs[k].stem)).to_ndarray(format="rgb24")
    yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
    board = np.where(((yy // 16 + xx // 16) % 2)[..., None] == 0, 200.0, 120.0)
    out = alpha[..., None] * frame + (1 - alpha[..., None]) * board
    return Image.fromarray(out.astype(np.uint8))


def _fit(d: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text` cut (with an ellipsis) to `width` pixels."""
    if d.textlength(text, font=font) <= width:
        return text
    while text and d.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(d: ImageDraw.ImageDraw, words: list[str], font, width: float) -> list[str]:
    lines, line = [], ""
    for w in words:
        trial = f"{line}, {w}" if line else w
        if line and d.textlength(trial, font=font) > width:
            lines.append(line + ",")
            line = w
        else:
            line = trial
    return lines + [line]


def graph_picture(wf: dict, names: dict[str, str]) -> Image.Image:
    """The template's graph drawn from its JSON: node boxes with their titles (`names`: node type -> display
    name), wires, and a caption with the model files it needs."""
    nodes = {n["id"]: n for n in wf["nodes"] if n["type"] != "MarkdownNote"}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] - 30 for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    W, H, M, CAP = SIZE[0], SIZE[1], 10, 92
    k = min((W - 2 * M) / (x1 - x0), (H - CAP - 2 * M) / (y1 - y0))
    ox, oy = M + ((W - 2 * M) - k * (x1 - x0)) / 2, M + ((H - CAP - 2 * M) - k * (y1 - y0)) / 2

    def xy(x, y):
        return ox + (x - x0) * k, oy + (y - y0) * k

    img = Image.new("RGB", SIZE, (30, 30, 34))
    d = ImageDraw.Draw(img)
    for gx in range(0, W, 16):
        d.line([(gx, 0), (gx, H)], fill=(36, 36, 40))
    for gy in range(0, H, 16):
        d.line([(0, gy), (W, gy)], fill=(36, 36, 40))
    for _, src, src_slot, dst, dst_slot, _ in wf["links"]:
        a, b = nodes[src], nodes[dst]
        p = xy(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 24 * src_slot)
        q = xy(b["pos"][0], b["pos"][1] + 14 + 24 * min(dst_slot, 6))
        d.line([p, ((p[0] + q[0]) / 2, p[1]), ((p[0] + q[0]) / 2, q[1]), q], fill=(150, 150, 160), width=1)
    font = ImageFont.load_default(size=max(7, int(34 * k)))
    for n in nodes.values():
        x, y = xy(n["pos"][0], n["pos"][1] - 30)
        xe, ye = xy(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        univs = n["type"].startswith("UniVS_")
        loader = bool((n.get("properties") or {}).get("models"))
        body = (40, 70, 120) if univs else (120, 70, 30) if loader else (58, 58, 64)
        d.rounded_rectangle([x, y, xe, ye], radius=3, fill=body, outline=(110, 110, 120))
        d.rectangle([x, y, xe, y + 30 * k], fill=tuple(min(255, c + 30) for c in body))
        title = n.get("title") or names.get(n["type"], n["type"])
        d.text((x + 2, y + 1), _fit(d, title, font, xe - x - 4), fill=(235, 235, 235), font=font)
    files = sorted({m["name"] for n in nodes.values() for m in (n.get("properties") or {}).get("models") or []})
    d.rectangle([0, H - CAP, W, H], fill=(20, 20, 22))
    cap = ImageFont.load_default(size=12)
    d.text((M, H - CAP + 6), wf["extra"]["info"]["name"], fill=(255, 255, 255), font=ImageFont.load_default(size=17))
    y = H - CAP + 30
    for line in _wrap(d, ["needs " + files[0], *files[1:]] if files else ["(no model files)"], cap, W - 2 * M)[:3]:
        d.text((M, y), line, fill=(230, 170, 90), font=cap)
        y += 16
    return img


def thumbnail(img: Image.Image) -> Image.Image:
    """Scaled to fit SIZE, letterboxed on black (the browser crops cards to this aspect)."""
    img = ImageOps.contain(img, SIZE, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", SIZE)
    canvas.paste(img, ((SIZE[0] - img.width) // 2, (SIZE[1] - img.height) // 2))
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--comfyui", type=Path, required=True, help="the server's ComfyUI folder (for output/ and input/)")
    ap.add_argument("--only", default="", help="only the templates whose file name contains this text")
    args = ap.parse_args()
    with urllib.request.urlopen(args.server.rstrip("/") + "/object_info", timeout=60) as r:
        names = {k: v.get("display_name") or k for k, v in json.load(r).items()}
    for template in sorted((ROOT / "workflows").glob("*.json")):
        if args.only not in template.stem:
            continue
        wf = json.loads(template.read_text())
        if (wf.get("extra") or {}).get("univs_ci") == "validate-only":
            img = graph_picture(wf, names)  # its models are not shipped: it cannot run here
        else:
            with tempfile.TemporaryDirectory() as tmp:
                log = run(args.server, template, Path(tmp))
                img = middle_video_frame(Path(tmp)) or middle_preview(Path(tmp)) or matte_cutout(log, args.comfyui)
        out = template.with_suffix(".jpg")
        thumbnail(img).save(out, "JPEG", quality=88)
        print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
