"""Make each template's thumbnail (workflows/<name>.jpg) from what the template really produces.

Runs every template on a ComfyUI server with this pack (through the workflow client of ../shared/comfyui), then
takes a middle frame of its first image preview; a template without previews (the streamed long clip) shows its
exported matte cut out of the sample frame over a checkerboard.

    python tools/make_template_thumbnails.py --server http://127.0.0.1:8188 --comfyui /path/to/ComfyUI
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT.parent / "shared" / "comfyui" / "run_workflow.py"
SIZE = (512, 384)


def run(server: str, template: Path, dest: Path) -> str:
    cmd = [sys.executable, str(CLIENT), "--server", server, "--download", str(dest), str(template)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{template.name}: the run failed (rc {done.returncode})\n{done.stdout[-2000:]}{done.stderr}")
    return done.stdout


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
    args = ap.parse_args()
    for template in sorted((ROOT / "workflows").glob("*.json")):
        with tempfile.TemporaryDirectory() as tmp:
            log = run(args.server, template, Path(tmp))
            img = middle_preview(Path(tmp)) or matte_cutout(log, args.comfyui)
        out = template.with_suffix(".jpg")
        thumbnail(img).save(out, "JPEG", quality=88)
        print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
