"""Images: loading with clear errors, transforms, and the two views of a split.

Train view: one item per caption (image, caption index); eval view: one item per image. Text never
passes through the loader: captions are looked up in the cached text features by index.
"""
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T


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


def build_transform(image_size, mean, std, train=False, randaugment=False):
    """Test: bicubic resize to S×S. Train: random-resized-crop (0.5–1) + flip (+ RandAugment(2, 5))."""
    if train:
        steps = [T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomHorizontalFlip()]
        if randaugment:
            steps.append(T.RandAugment(num_ops=2, magnitude=5))
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
