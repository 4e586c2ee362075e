"""The image-to-tensor transform a model expects. It travels with the model and the index."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FITS = ("crop", "whole", "pad")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes a ``(3, crop, crop)`` tensor: scale to [0, 1], then normalise.

    ``fit`` says how the image is brought to ``crop x crop``:

    - ``crop``: resize the short side to ``resize`` and keep the centre ``crop x crop`` (the
      ImageNet evaluation transform; it cuts off the edges of wide or tall images);
    - ``whole``: resize the whole image to ``crop x crop``, changing its aspect ratio;
    - ``pad``: resize the long side to ``crop`` and pad the short side with the mean colour.

    ``resize`` only matters for ``crop``. Indexes built before ``fit`` existed recorded no
    ``fit`` and were centre-cropped, so a dict without it means ``crop``, and ``to_dict`` leaves
    it out for ``crop``: the identities those indexes recorded still match.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic"
    fit: str = "crop"

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {self.fit!r}")

    @property
    def min_side(self) -> int:
        """The short side a decoder must keep (JPEG draft mode may decode smaller than the file)."""
        return self.resize if self.fit == "crop" else self.crop

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.fit == "crop":
            del d["fit"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["resize"]), int(d["crop"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), str(d.get("interpolation", "bilinear")), str(d.get("fit", "crop")))

    def transform(self):
        """A picklable callable mapping an RGB PIL image to a (3, crop, crop) float tensor."""
        from torchvision import transforms as T

        mode = T.InterpolationMode(self.interpolation)
        if self.fit == "crop":
            geometry = [T.Resize(self.resize, interpolation=mode, antialias=True), T.CenterCrop(self.crop)]
        elif self.fit == "whole":
            geometry = [T.Resize((self.crop, self.crop), interpolation=mode, antialias=True)]
        else:
            geometry = [_PadToSquare(self.crop, self.mean, mode)]
        return T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])


class _PadToSquare:
    """Resize the long side to ``size`` and centre the image on a ``size x size`` canvas of the
    mean colour (which normalises to zero, as the network's own zero padding does)."""

    def __init__(self, size: int, mean, mode):
        self.size, self.fill, self.mode = size, tuple(round(255 * m) for m in mean), mode

    def __call__(self, image):
        from PIL import Image
        from torchvision.transforms import functional as TF

        w, h = image.size
        scale = self.size / max(w, h)
        w2, h2 = max(1, round(w * scale)), max(1, round(h * scale))
        image = TF.resize(image, [h2, w2], interpolation=self.mode, antialias=True)
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        canvas.paste(image, ((self.size - w2) // 2, (self.size - h2) // 2))
        return canvas
