"""Everything a run builds from its config once: splits, cached caption features, transforms, and a
factory of fresh students. Shared by buffer.py and evaluate.py (and later distillation)."""
import copy

import torch

from common.distributed import pick_device
from common.errors import ConfigError
from data.annotations import load_split
from data.images import build_transform
from data.text_cache import caption_features
from networks.encoders import ImageTower, TextEncoder
from networks.student import DualEncoder
from training.fit import cached_text_source, evaluate_retrieval, sampled_text_source
from training.recipe import expert_recipe, pixel_stats


class RunContext:
    def __init__(self, cfg, splits=("train", "test"), device=None, log=print):
        self.cfg, self.log = cfg, log
        data, model = cfg["data"], cfg["model"]
        self.device = device or pick_device(cfg["device"])
        self.trainable = model["trainable"]  # full towers, or RepBlend's two projection heads
        self.cache_dir = cfg["cache_dir"]
        # data.image_cache: images read decoded from a uint8 cache in cache_dir (data/image_cache.py); None: from disk
        self.image_cache = self.cache_dir if data["image_cache"] else None
        self.splits = {name: load_split(data, name) for name in splits}
        self.text_encoder = TextEncoder(model["text_encoder"], model["text_max_length"]).to(self.device)
        self._image_tower = ImageTower(model["image_encoder"], model["image_weights"], self.cache_dir)
        self.image_size = data["image_size"]
        self.recipe = expert_recipe(cfg)
        self.mean, self.std = mean, std = pixel_stats(self.recipe, self._image_tower)
        self.test_transform = build_transform(self.image_size, mean, std, train=False)
        self.train_transform = build_transform(self.image_size, mean, std, train=True,
                                               randaugment=self.recipe["data.randaugment"])
        self.features = {name: caption_features(split, self.text_encoder, self.cache_dir, log)
                         for name, split in self.splits.items()}
        self.text_encoder.cpu()  # frozen and cached: keep it off the accelerator from here on
        self._noisy_features = None

    def expert_text_source(self, seed):
        """Caption indices -> text features while an expert trains: the clean cache, or with
        buffer.text_encoder_dropout one of the M dropout-noised encodings per use, drawn with `seed`."""
        if not self.recipe["buffer.text_encoder_dropout"]:
            return cached_text_source(self.features["train"], self.device)
        if self._noisy_features is None:
            if not self.text_encoder.dropout:
                raise ConfigError(f"buffer.text_encoder_dropout: true, but the text encoder {self.text_encoder.name} "
                                 f"has no dropout to turn on; set it to false")
            self.text_encoder.to(self.device)
            self._noisy_features = caption_features(self.splits["train"], self.text_encoder, self.cache_dir,
                                                    self.log, samples=self.recipe["buffer.text_feature_samples"])
            self.text_encoder.cpu()
        return sampled_text_source(self._noisy_features, self.device, seed)

    def recall(self, student, split):
        """TR/IR recall of `student` on this run's `split`, with its test transform and image cache."""
        return evaluate_retrieval(student, self.splits[split], self.features[split], self.test_transform, self.device,
                                  image_cache=self.image_cache)

    def new_student(self, seed):
        """A fresh student: the pretrained image tower and a text head initialised from `seed`; with
        model.trainable heads the backbone is frozen under a fresh image projection head (also from `seed`,
        with the text head's dropout), and only the two heads train."""
        torch.manual_seed(seed)
        model = self.cfg["model"]
        dropout = model["text_dropout"]
        tower = copy.deepcopy(self._image_tower)
        if self.trainable == "heads":
            tower.add_projection_head(dropout)
        student = DualEncoder(tower, self.text_encoder.hidden_size, model["temperature"], dropout)
        return student.to(self.device)

    def identity(self):
        """What a trajectory or distilled set made in this run depends on; checked when it is reused."""
        return {"image_encoder": self.cfg["model"]["image_encoder"],
                "image_weights": self._image_tower.weights_hash,
                "text_encoder": str(self.cfg["model"]["text_encoder"]),
                "text_weights": self.text_encoder.weights_hash,
                "image_size": self.image_size,
                "dataset": self.cfg["data"]["name"],
                "recipe": self.recipe}

    def artefact_identity(self):
        """The identity plus the pixel normalisation: what a distilled set made in this run records."""
        return {**self.identity(), "mean": list(self.mean), "std": list(self.std)}
