from .dataset import TaskData, load_data, load_inputs, load_unlabelled, split_data
from .images import ImageReadError, decode_image, open_rgb
from .store import decode_images, image_store
from .validate import Problem, Report, validate_data

__all__ = ["TaskData", "load_data", "load_inputs", "load_unlabelled", "split_data", "decode_image", "decode_images", "image_store", "open_rgb",
           "ImageReadError", "Problem", "Report", "validate_data"]
