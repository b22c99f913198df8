"""vitlab: build, load, train, fine-tune and look inside Vision Transformers."""

from vitlab.checkpoint import export_npz, export_timm, save
from vitlab.config import ViTConfig
from vitlab.convert import CheckpointError
from vitlab.factory import create_model, load
from vitlab.hub import HubError
from vitlab.model import Intermediates, VisionTransformer
from vitlab.preprocess import Preprocessing, load_image
from vitlab.registry import get_config, list_models

__version__ = "0.2.0"

__all__ = [
    "CheckpointError", "HubError", "Intermediates", "Preprocessing", "ViTConfig", "VisionTransformer",
    "create_model", "export_npz", "export_timm", "get_config", "list_models", "load", "load_image", "save",
]
