"""UniVS: unified and universal video segmentation with prompts as queries (pure PyTorch)."""
from .config import PRESETS, UniVSConfig, get_config

__all__ = ["PRESETS", "UniVSConfig", "get_config"]
