"""UniVS for ComfyUI: video segmentation nodes (V3 schema) around the pure-PyTorch ``univs_engine``.

ComfyUI imports this folder from ``custom_nodes/``. Registration uses ``comfy_entrypoint`` (V3) only; there is
deliberately no ``NODE_CLASS_MAPPINGS`` (it would make ComfyUI ignore the entrypoint). The node modules are
imported relatively: ComfyUI has its own top-level module called ``nodes``.
"""
import os as _os
import sys as _sys

_HERE = _os.path.dirname(_os.path.abspath(__file__))


def _ensure_engine() -> None:
    """Make the sibling ``univs_engine`` importable when the pack is not pip-installed (git clone / Manager).

    The package is registered by file location instead of putting this folder on ``sys.path``, which would also
    expose our ``nodes`` folder as a top-level module and shadow ComfyUI's own ``nodes``.
    """
    try:
        import univs_engine  # noqa: F401

        return
    except ImportError:
        pass
    import importlib.util

    init = _os.path.join(_HERE, "univs_engine", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "univs_engine", init, submodule_search_locations=[_os.path.dirname(init)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"UniVS: engine package not found at {init}")
    module = importlib.util.module_from_spec(spec)
    _sys.modules["univs_engine"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _sys.modules.pop("univs_engine", None)
        raise


_ensure_engine()

WEB_DIRECTORY = "./web"

from .nodes import HAVE_COMFY as _HAVE_COMFY  # noqa: E402

if _HAVE_COMFY:
    from .nodes import comfy_entrypoint  # noqa: E402,F401

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
else:
    __all__ = ["WEB_DIRECTORY"]
