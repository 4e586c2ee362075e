"""The image-to-tensor transform a model expects. It travels with the model and the index."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, centre-crop ``crop``, scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["resize"]), int(d["crop"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), str(d.get("interpolation", "bilinear")))

    def transform(self):
        """A picklable callable mapping an RGB PIL image to a (3, crop, crop) float tensor."""
        from torchvision import transforms as T

        mode = T.InterpolationMode(self.interpolation)
        return T.Compose([
            T.Resize(self.resize, interpolation=mode, antialias=True),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])
