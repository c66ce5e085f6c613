"""bf16/fp16 autocast error against fp32 on the reference pipeline (stage g: R50, rule weights).

    python tools/precision_error.py [--device cuda] [--frames 8]

Prints max abs logit error and the fraction of mask pixels that agree with fp32, per precision.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "reference_reduced"  # the inputs it needs are carried whole in the reduced set


def run(model, frames, mask, dtype, device):
    from univs_engine.inference.core import ClipGeometry
    from univs_engine.inference.vos import PromptedClipLoop
    from univs_engine.presets import TaskSettings

    geometry = ClipGeometry(len(frames), (256, 256), (256, 256), (256, 256))
    loop = PromptedClipLoop(model, TaskSettings(clip_len=5, prompt_tokens=256), geometry,
                            generator=torch.Generator().manual_seed(0))
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        out = [l.float() for _, l, _ in loop.run(lambda a, b: frames[a:b].to(device), 1,
                                                  {0: (torch.tensor([0]), mask.to(device))})]
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import weight_rule as mw  # the repository's own implementation of the reference weight rule

    from univs_engine.config import get_config
    from univs_engine.modeling.univs import build_univs

    torch.manual_seed(0)
    model = build_univs(get_config("r50"))
    model.load_state_dict(mw.official_effective_state_dict(mw.make_state_dict(model.state_dict())))
    model.to(args.device)
    base = load_file(REF / "univs_r50_a_input.safetensors")["frames_normalized"]
    frames = torch.cat([base, base.flip(-1), base.flip(-2)])[: args.frames]  # a few distinct frames
    mask = load_file(REF / "univs_r50_e_visual_prompt.safetensors")["prompt_mask_frame0"].float()[None]
    ref = run(model, frames, mask, torch.float32, args.device)
    print(f"device {args.device}: {args.frames} frames 256x256, R50 with the reference weight rule")
    print(f"{'precision':>10} {'max |logit err|':>16} {'mask agreement':>15}")
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            got = run(model, frames, mask, dt, args.device)
        except RuntimeError as e:  # fp16 autocast is not available on every CPU build
            print(f"{name:>10} unavailable: {str(e).splitlines()[0][:60]}")
            continue
        agree = ((got > 0) == (ref > 0)).float().mean().item()
        print(f"{name:>10} {(got - ref).abs().max().item():>16.4f} {agree:>15.4%}")


if __name__ == "__main__":
    main()
