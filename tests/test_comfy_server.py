"""Against a running ComfyUI with this pack (set UNIVS_COMFY_URL, as .ci/comfyui_e2e.sh does): behaviour that only
ComfyUI's executor and cache show. Skipped without a server; the CI's real-ComfyUI step runs it."""
from __future__ import annotations

import io
import json
import os
import time
import urllib.parse
import urllib.request

import pytest

URL = os.environ.get("UNIVS_COMFY_URL")
pytestmark = pytest.mark.skipif(not URL, reason="needs a running ComfyUI: set UNIVS_COMFY_URL")

BOX = json.dumps({"version": 1, "objects": [{"id": 1, "label": "cross", "frames": {
    "0": {"points": [], "box": [50, 49, 119, 118]}}}]})


def _call(path: str, data: dict | None = None):
    req = urllib.request.Request(URL.rstrip("/") + path, method="POST" if data is not None else "GET",
                                 data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def run(prompt: dict, deadline_s: float = 600) -> dict:
    """Queue an API-format prompt and return its /history entry once the server has recorded it."""
    queued = json.loads(_call("/prompt", {"prompt": prompt}))
    assert not queued.get("node_errors"), queued["node_errors"]  # ComfyUI would silently drop the failing outputs
    pid = queued["prompt_id"]
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        entry = json.loads(_call(f"/history/{pid}")).get(pid)
        if entry and entry.get("status", {}).get("completed") is not None:
            assert entry["status"]["status_str"] == "success", entry["status"]
            return entry
        time.sleep(0.2)  # polling interval; the wait itself ends on the recorded result
    raise AssertionError(f"prompt {pid} did not finish within {deadline_s} s")


def tracking_prompt() -> dict:
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "univs_sample.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "UniVS_LoadModel", "inputs": {"checkpoint": "univs_small (built-in)", "precision": "auto",
                                                          "device": "auto", "text_encoder": "none",
                                                          "class_embeddings": "none", "offload_after_run": False}},
        "4": {"class_type": "UniVS_PromptTarget", "inputs": {"frame_index": 0, "object_id": 1, "label": "cross",
                                                             "editor": BOX}},
        "5": {"class_type": "UniVS_PropagateMasks", "inputs": {"model": ["3", 0], "prompts": ["4", 0],
                                                               "images": ["2", 0], "direction": "forward",
                                                               "start_frame": 0, "end_frame": 7, "preset": "auto",
                                                               "fps": ["2", 2]}},
        "6": {"class_type": "UniVS_TracksLegend", "inputs": {"tracks": ["5", 0], "select": ""}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    }


def test_connecting_a_mask_consumer_after_a_cached_run_gives_full_size_masks():
    """Run once without a mask consumer, connect one, queue again: the tracking node comes from ComfyUI's cache
    and the new consumer must still get the full-size MASK batch (8 frames of 320 x 240)."""
    from PIL import Image

    first = tracking_prompt()
    run(first)
    second = dict(first)
    second["8"] = {"class_type": "UniVS_TracksToMask", "inputs": {"tracks": ["5", 0], "select": "", "start_frame": 0,
                                                                  "end_frame": 7, "grow": 0, "feather": 0.0,
                                                                  "mode": "union"}}
    second["9"] = {"class_type": "MaskPreview", "inputs": {"mask": ["8", 0]}}
    entry = run(second)
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and "5" in cached[0], "the tracking node was expected to come from the cache"
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 8
    for im in images:
        data = _call("/view?" + urllib.parse.urlencode({k: im[k] for k in ("filename", "subfolder", "type")}))
        assert Image.open(io.BytesIO(data)).size == (320, 240)
