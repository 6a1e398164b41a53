"""Data sets: the embedded digits (scikit-learn's bundled handwritten digits) and image folders."""
from .digits import DIGITS_SIZE, digits_split, load_digits_32
from .folder import load_image_folder, load_images

__all__ = ["DIGITS_SIZE", "digits_split", "load_digits_32", "load_image_folder", "load_images"]
