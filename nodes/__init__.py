"""ComfyUI node pack of UniVS. Loaded relatively by the pack's root ``__init__.py`` (never as top-level ``nodes``).

The plain-function modules (convert, prompts, select, export, runtime) import no ComfyUI code; ``comfy_nodes``
holds the V3 node classes and is imported only when ComfyUI's ``comfy_api`` is importable.
"""
from __future__ import annotations

import importlib.util

HAVE_COMFY = importlib.util.find_spec("comfy_api") is not None and importlib.util.find_spec("folder_paths") is not None

if HAVE_COMFY:
    from .comfy_nodes import NODES, UniVSExtension, comfy_entrypoint  # noqa: F401

    __all__ = ["NODES", "UniVSExtension", "comfy_entrypoint", "HAVE_COMFY"]
else:
    __all__ = ["HAVE_COMFY"]
