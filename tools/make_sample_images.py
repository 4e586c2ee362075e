"""Rebuild sample_images/ and sample_queries/ from Debian's openclipart-png (public domain).

    apt-get install openclipart-png && python tools/make_sample_images.py

Picks images by file-name patterns per class (deterministic), scales them to at most 256 px
and writes SOURCES.md entries. Queries are other images of the same classes, never indexed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from PIL import Image

CLIPART = Path("/usr/share/openclipart/png")
CLASSES = {
    "birds": ("animals/birds", r"eagle|duck|penguin|gull|hen|crow|owl|gufo|parrot|cigno|swan|flamand|cormorant|gallo|rooster|bird|pelican|stork|toucan|aquila|acquila|robin|chick"),
    "bugs": ("animals/bugs", r"bee|abeille|ant\.|butterfly|farfalla|ladybug|coccin|dragonfly|libell|spider|ragno|wasp|grass_hopper|cavalletta|fly_|caterpillar|mant|snail|lumaca"),
    "fish": ("animals/fish", r"angelfish|greyling|brown_fish|clown|cichlid|gourami|pescetto|bofish|seahorse|dolphin|orca|whale"),
    "mammals": ("animals/mammals", r"pig|monkey|antilope|bull|bunny|cat_|squirrel|coniglio|canguro|elephant|fox|giraffe|deer|dog|horse|lion|bear|sheep|cow|tiger|zebra|mouse|rabbit"),
    "fruit": ("food/fruit", r"apple\.|an_apple|another_apple|apple_mateya|banana|cherr|grape|orange|pear|strawberr|lemon|pineapple|watermelon|peach|plum"),
    "flowers": ("plants/flowers", r"flower|daffodil|daisy|fiore|rose|tulip|sunflower|geranium|magnolia|lotas|sakura|bouquet|bloom"),
    "vehicles": ("transportation/vehicles", r"chevrolet|celebr|4wd|autos|ambulans|big_truck|blazer|bus\d?_|bus_01|car\.|hummer|jeep|van_|taxi|truck|pickup|sedan|racing|police"),
    "clocks": ("signs_and_symbols/clocks", r"alarm_clock|analog|clock0[15]|clock11|clock_michael|modern_clock|orologio"),
}
EXCLUDE = {
    "duck_yellow_ii_kurt_cagl_.png",  # renders as a "Linked Image Not Found" box
    "1989_chevrolet_celebrit_02.png",  # the same drawing as ..._01.png
}
PER_CLASS, QUERIES_PER_CLASS, MAX_SIDE = 10, 1, 256


def pick(folder: Path, pattern: str) -> list[Path]:
    files = sorted(p for p in folder.glob("*.png") if re.search(pattern, p.name) and not p.name.endswith("_bw.png"))
    files = [p for p in files if "_bw" not in p.stem and p.name not in EXCLUDE]
    # Spread the choice over the sorted list so that one author's series does not dominate.
    want = PER_CLASS + QUERIES_PER_CLASS
    if len(files) < want:
        sys.exit(f"{folder}: only {len(files)} matching files, need {want}")
    step = len(files) / want
    return [files[int(i * step)] for i in range(want)]


def save(src: Path, dest: Path) -> None:
    with Image.open(src) as im:
        im = im.convert("RGBA")
        bbox = im.getchannel("A").getbbox()  # trim transparent margins around the drawing
        if bbox:
            im = im.crop(bbox)
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest, optimize=True)


def main() -> None:
    top = Path(__file__).resolve().parent.parent
    gallery, queries = top / "sample_images", top / "sample_queries"
    rows = []
    for label, (sub, pattern) in CLASSES.items():
        chosen = pick(CLIPART / sub, pattern)
        for i, src in enumerate(chosen):
            dest = (gallery / label / src.name) if i % (PER_CLASS // QUERIES_PER_CLASS + 1) else (queries / f"{label}_{src.name}")
            save(src, dest)
            rows.append((dest.relative_to(top).as_posix(), f"openclipart-png 0.18: `{sub}/{src.name}`"))
    with open(gallery / "SOURCES.md", "w") as f:
        f.write(SOURCES_HEADER)
        for path, origin in sorted(rows):
            f.write(f"| `{path}` | {origin} | public domain |\n")


SOURCES_HEADER = """# Sources of the sample images

Every image in `sample_images/` and `sample_queries/` comes from Debian's package
`openclipart-png` (version 1:0.18+dfsg-19), the Open Clip Art Library, whose images are dedicated
to the public domain (Creative Commons Public Domain Dedication; see
`/usr/share/doc/openclipart-png/copyright`). They were scaled to at most 256 px by
`tools/make_sample_images.py`, which rebuilds both folders.

| file | origin | licence |
|---|---|---|
"""

if __name__ == "__main__":
    main()
