"""ferlite: facial-emotion models from a workstation to a Raspberry Pi."""

import os

__version__ = "0.1.0"

# The most pixels an image may claim before OpenCV refuses to decode it: 40 M (e.g. 8000x5000), so
# a small file claiming a huge image cannot take the device's memory (OpenCV reads this once, when
# it is imported, so it is set here, before any ferlite module imports cv2).
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 64 * 2**20  # a photo's file; checked before it is read at all
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
