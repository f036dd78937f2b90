"""Images: loading with clear errors, transforms, and the two views of a split.

Train view: one item per caption (image, caption index); eval view: one item per image. Text never
passes through the loader: captions are looked up in the cached text features by index.
"""
import math
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as F

from common.errors import InputError

# Captioning datasets hold images under 1 megapixel (COCO at most 640×640) and 40 MP covers phone and most camera
# photos, while a bigger one (or a decompression bomb whose header claims 10,000×10,000) would take hundreds of MB
# per loader worker to decode for a 224-pixel input: it is refused from its header, before decoding.
MAX_PIXELS = 40_000_000
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(InputError):
    pass


def composite_on_white(img):
    """RGB image with any transparency flattened onto white (cut-out stamps are drawn for a white canvas)."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_image(path):
    """RGB image; transparent images are composited on white.

    Images above MAX_PIXELS are refused before decoding. Grey images deeper than 8 bits are scaled to 8 bits
    (Pillow would clip them, turning 16-bit ones white and float ones black): 16-bit (modes I;16*) by value/257;
    32-bit integers (mode I) likewise when all values lie in 0–65535 (how some decoders hand over 16-bit data),
    refused otherwise; floats (mode F) by value×255 when all values lie in [0, 1], refused otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own size alarm: refuse too
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageReadError(
                        f"image {path} is {width}×{height} ({width * height / 1e6:.1f} megapixels), above the limit "
                        f"of {MAX_PIXELS / 1e6:g} megapixels; shrink it or remove it from the annotations")
                img.load()
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    return composite_on_white(img)
                if img.mode in _SIXTEEN_BIT_MODES + ("I", "F"):
                    return _grey_to_8_bits(img, path).convert("RGB")
                return img.convert("RGB")
    except FileNotFoundError as err:
        raise ImageReadError(f"image {path} not found; check data.image_root or download the images") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(
            f"image {path} is refused as a possible decompression bomb ({err}); shrink it or remove it from the "
            f"annotations") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(
            f"image {path} cannot be decoded ({err}); re-download it or remove it from the annotations") from err


def _grey_to_8_bits(img, path):
    """Mode L image from a 16-bit, 32-bit integer or float grey image, by the rules in `load_image`."""
    values = np.asarray(img, dtype=np.float32)  # exact for 16-bit values
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(values).all() and 0 <= low and high <= 1):
            raise ImageReadError(
                f"image {path} holds floating-point pixels spanning [{low:g}, {high:g}], not [0, 1], so their "
                f"brightness is unknown; convert it to an 8-bit image or remove it from the annotations")
        scaled = values * 255
    else:
        if img.mode == "I" and not (0 <= low and high <= 65535):
            raise ImageReadError(
                f"image {path} holds 32-bit integer pixels spanning [{low:g}, {high:g}], outside the 16-bit range "
                f"0–65535, so their brightness is unknown; convert it to an 8-bit image or remove it from the "
                f"annotations")
        scaled = values / 257  # 65535 -> 255 exactly
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


class RandomAugment:
    """BLIP's RandomAugment, which the public LoRS code applies to expert images: `num_ops` operations drawn with
    replacement from ten, each applied with probability ½ at `level` of 10, geometric ones filling with grey
    (at level 5 brightness and sharpness have factor 1: no change). Draws from torch's RNG, so DataLoader workers
    get distinct streams (the public code's NumPy draws repeat across workers; not reproduced)."""

    FILL = (128, 128, 128)

    def __init__(self, num_ops=2, level=5):
        self.num_ops, self.level = num_ops, level
        self.ops = ("identity", "autocontrast", "equalize", "brightness", "sharpness",
                    "shear_x", "shear_y", "translate_x", "translate_y", "rotate")

    def __call__(self, img):
        for op in torch.randint(len(self.ops), (self.num_ops,)).tolist():
            if torch.rand(()) < 0.5:
                img = self.apply(self.ops[op], img)
        return img

    def apply(self, name, img):
        fraction = self.level / 10
        sign = -1.0 if torch.rand(()) > 0.5 else 1.0
        bilinear = T.InterpolationMode.BILINEAR
        shift = {"fill": self.FILL, "interpolation": bilinear, "angle": 0.0, "scale": 1.0}
        shear = math.degrees(math.atan(sign * 0.3 * fraction))  # about the top-left corner, as cv2's matrix
        if name == "autocontrast":
            return F.autocontrast(img)
        if name == "equalize":
            return F.equalize(img)
        if name in ("brightness", "sharpness"):
            adjust = F.adjust_brightness if name == "brightness" else F.adjust_sharpness
            return adjust(img, 1.8 * fraction + 0.1)
        if name.startswith("shear"):
            angles = [shear, 0.0] if name == "shear_x" else [0.0, shear]
            return F.affine(img, translate=[0, 0], shear=angles, center=[0, 0], **shift)
        if name.startswith("translate"):  # up to 10 pixels whatever the image size, as published
            offset = round(sign * 10 * fraction)
            return F.affine(img, translate=[offset, 0] if name == "translate_x" else [0, offset], shear=[0.0, 0.0],
                            **shift)
        if name == "rotate":
            return F.rotate(img, sign * 30 * fraction, interpolation=bilinear, fill=self.FILL)
        return img


def build_transform(image_size, mean, std, train=False, randaugment=False):
    """Test: bicubic resize to S×S. Train: random-resized-crop (0.5–1) + flip (+ BLIP's RandomAugment(2, 5))."""
    if train:
        steps = [T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomHorizontalFlip()]
        if randaugment:
            steps.append(RandomAugment(num_ops=2, level=5))
    else:
        steps = [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


class SplitImages(Dataset):
    """Images of a split as (image tensor, index): one item per caption (the train view, index = caption)
    or one per image (the eval view, index = image). With `stored` (data/image_cache.py: the split's images
    decoded and resized once) the transform runs on those instead of the files."""

    def __init__(self, split, transform, per_caption, stored=None):
        self.split, self.transform, self.stored = split, transform, stored
        self.image_of = split.caption_image if per_caption else range(len(split.image_paths))

    def __len__(self):
        return len(self.image_of)

    def __getitem__(self, index):
        image = self.image_of[index]
        img = load_image(self.split.image_paths[image]) if self.stored is None else self.stored[image]
        return self.transform(img), index
