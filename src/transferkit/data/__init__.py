from .dataset import TaskData, load_data, load_inputs, split_data
from .images import decode_image, decode_images, open_rgb

__all__ = ["TaskData", "load_data", "load_inputs", "split_data", "decode_image", "decode_images", "open_rgb"]
