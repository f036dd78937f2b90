"""Images: loading with clear errors, transforms, and the two views of a split.

Train view: one item per caption (image, caption index); eval view: one item per image. Text never
passes through the loader: captions are looked up in the cached text features by index.
"""
import math

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as F


class ImageReadError(RuntimeError):
    pass


def composite_on_white(img):
    """RGB image with any transparency flattened onto white (cut-out stamps are drawn for a white canvas)."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_image(path):
    """RGB image; transparent images are composited on white."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                return composite_on_white(img)
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise ImageReadError(f"image {path} not found; check data.image_root or download the images") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(
            f"image {path} cannot be decoded ({err}); re-download it or remove it from the annotations") from err


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
    or one per image (the eval view, index = image)."""

    def __init__(self, split, transform, per_caption):
        self.split, self.transform = split, transform
        self.image_of = split.caption_image if per_caption else range(len(split.image_paths))

    def __len__(self):
        return len(self.image_of)

    def __getitem__(self, index):
        return self.transform(load_image(self.split.image_paths[self.image_of[index]])), index
