"""`specks`: a dataset made up on the spot, where the class hides in single pixels.

Every image is a smooth background of one random colour (with a gentle drift in hue and brightness
across the image and a little noise), sprinkled with single-pixel *specks* at random positions
(4-12 % of the pixels). The class is the *kind* of speck, each defined relative to the background
colour under it:

    lighter      brighter than the background          darker       darker than the background
    inverted     the background's complementary colour  hue_shift    the background's colour with RGB -> GBR
    greyed       the background's colour without hue    saturated    the background's hue at full saturation
    salt_pepper  half brighter, half darker             confetti     uniformly random colours

Why it shows the patch-size effect, even after a few hundred training steps on a CPU:

* The evidence is one pixel wide. Averages over 2x2, 4x4 or 8x8 patches carry no class information
  (the background colour is random and the specks fill only a few percent of a patch), so a model
  must look at pixels individually and non-linearly ("is this pixel lighter than its neighbours?").
* A patch embedding is one linear map per patch with separate weights for every position inside
  the patch. A p x p patch token can only report "a lighter pixel somewhere in here" if its
  embedding learns that detector p*p times over (once per position) and keeps them apart in its
  D dimensions; with p = 8 that is 64 detectors per speck kind in a 64- or 128-dimensional token.
* With 1x1 patches every pixel is its own token: one detector, shared by all positions, learned
  from every pixel of every image. Attention then pools the answers over the image.

So accuracy rises steadily as the patch shrinks from 8 to 1, which is the paper's observation in a
form small enough to reproduce in minutes (`pixelvit sweep`; results/specks_default). It is
deliberately a best case for pixel tokens. While tuning this generator we also tried classes defined
by *spatial* arrangements of a few pixels (1-px stripes, checkerboards, 2-px blocks, pairs): a
pixel-token ViT must then learn locality from scratch through attention, and after 300 steps at 8x8
it solved the speck classes but not those (38 % overall, against 90 % for 2x2 patches). Given enough
training the paper finds pixels win there too; a CPU budget is not enough.

The data is a pure function of (seed, split, size): nothing is downloaded and the same seed always
gives the same pixels. Train and test images come from independent random streams.
"""

from __future__ import annotations

import numpy as np

from pixelvit.data.arrays import ImageArrays

CLASSES = ["lighter", "darker", "inverted", "hue_shift", "greyed", "saturated", "salt_pepper", "confetti"]
SPLIT_SIZES = {"train": 20_000, "test": 2_000}
SPLIT_STREAMS = {"train": 0, "test": 1}  # independent random streams per split

SPECK_FRACTION = (0.04, 0.12)  # share of pixels that are specks, drawn per image
BRIGHTNESS_STEP = 0.3  # how much lighter / darker a speck is (colours in 0..1)
PIXEL_NOISE = 0.03  # std of Gaussian noise on every pixel


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of one shape (all in 0..1); returns shape + (3,).

    The closed form: channel n in (R, G, B) = (5, 3, 1) is v - v * s * clip(min(k, 4 - k), 0, 1)
    with k = (n + 6 * hue) mod 6.
    """
    channels = []
    for n in (5, 3, 1):
        k = (n + 6 * hue) % 6
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, axis=-1)


def speck_colours(kind: str, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The colour a speck of `kind` takes on `background` (..., 3); values may leave 0..1 (clipped later)."""
    if kind == "lighter":
        return background + BRIGHTNESS_STEP
    if kind == "darker":
        return background - BRIGHTNESS_STEP
    if kind == "inverted":
        return 1.0 - background
    if kind == "hue_shift":
        return background[..., [1, 2, 0]]  # R,G,B -> G,B,R: hue turned by 120 degrees
    if kind == "greyed":
        return np.repeat(background.mean(-1, keepdims=True), 3, axis=-1)
    if kind == "saturated":
        low, high = background.min(-1, keepdims=True), background.max(-1, keepdims=True)
        return (background - low) / np.maximum(high - low, 1e-3) * high  # same hue and value, saturation 1
    if kind == "salt_pepper":
        sign = rng.choice([-1.0, 1.0], size=background.shape[:-1])[..., None]
        return background + BRIGHTNESS_STEP * sign
    if kind == "confetti":
        return rng.random(background.shape)
    raise ValueError(f"unknown speck kind {kind!r}; known: {CLASSES}")


def generate(count: int, img_size: int = 16, seed: int = 0, stream: int = 0) -> ImageArrays:
    """`count` images of img_size x img_size, classes balanced in expectation, fully determined by the seeds."""
    rng = np.random.default_rng([seed, stream])
    labels = rng.integers(0, len(CLASSES), count)
    chunks = [draw_images(labels[start:start + CHUNK], img_size, rng) for start in range(0, count, CHUNK)]
    return ImageArrays(np.concatenate(chunks), labels, list(CLASSES), name="specks")


CHUNK = 2_000  # images drawn at a time (bounds the float64 working memory to ~100 MB at 16 px)


def draw_images(labels: np.ndarray, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, H, W, 3) images for `labels`, drawing from `rng`."""
    count = len(labels)
    # 1. backgrounds: one random colour per image, drifting slightly in hue and brightness across it
    y, x = np.mgrid[0:img_size, 0:img_size] / max(img_size - 1, 1) - 0.5  # (H, W), -0.5..0.5
    hue = rng.random((count, 1, 1)) + rng.uniform(-0.06, 0.06, (count, 1, 1)) * x + rng.uniform(-0.06, 0.06, (count, 1, 1)) * y
    saturation = rng.uniform(0.35, 0.8, (count, 1, 1)) * np.ones_like(hue)
    value = np.clip(rng.uniform(0.35, 0.75, (count, 1, 1)) + rng.uniform(-0.1, 0.1, (count, 1, 1)) * y, 0, 1)
    background = hsv_to_rgb(hue % 1.0, saturation, value)  # (N, H, W, 3)

    # 2. where the specks go: a random few percent of the pixels of each image
    fraction = rng.uniform(*SPECK_FRACTION, (count, 1, 1))
    is_speck = rng.random((count, img_size, img_size)) < fraction  # (N, H, W)

    # 3. what the specks look like: the class decides, relative to the background under each speck
    images = background.copy()
    for label, kind in enumerate(CLASSES):
        chosen = labels == label
        specks = speck_colours(kind, background[chosen], rng)
        images[chosen] = np.where(is_speck[chosen][..., None], specks, background[chosen])

    # 4. sensor noise, then 8-bit pixels like any image file
    images += rng.normal(0.0, PIXEL_NOISE, images.shape)
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def load_specks(split: str = "train", img_size: int = 16, seed: int = 0, count: int | None = None) -> ImageArrays:
    """The `split` ("train": 20,000 images, "test": 2,000) of the specks dataset at `img_size`."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"specks has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    return generate(count or SPLIT_SIZES[split], img_size, seed, SPLIT_STREAMS[split])
