#!/usr/bin/env python3
"""Canny edge-detection fixtures (ControlNet canny preprocessor), never edit by hand.
Run from the repository root:
    /root/.cache/webdiffusion/venv/bin/python scripts/make_canny_fixtures.py

tests/fixtures/canny/
    {name}.png                      8-bit RGB inputs, synthetic and deterministic:
        shapes-96x96                anti-aliased (4x supersampled) filled / outlined shapes in
                                    colours on a coloured background, some of low contrast
        gradient-noise-128x96       colour ramps / a sine band, a disc with a soft rim, Gaussian noise (sigma 3)
        lines-80x80                 1-px and 2-px lines (horizontal, vertical, diagonal, shallow),
                                    a 1-px grid corner and single dots, partly low contrast
        gray-64x64                  R = G = B: shapes of strong, medium and weak contrast, a ramp and
                                    mild noise (grayscale-looking)
    {name}.canny-{low}-{high}.png   8-bit single-channel ("L") 0/255 edge maps:
                                    cv2.Canny(rgb, low, high) on the HxWx3 uint8 RGB array, exactly as
                                    lllyasviel's ControlNet annotator (annotator/canny: CannyDetector
                                    returns cv2.Canny(img, low_threshold, high_threshold) on the RGB
                                    image): apertureSize 3, L2gradient False; (low, high) in
                                    (100, 200) (the annotator's default) and (50, 150)
    canny.json                      the pairs, parameters and the facts checked below

What cv2.Canny does on a 3-channel image (checked here by experiment on every input, asserted):
  * no smoothing: there is no Gaussian blur step (Canny(img) != Canny(GaussianBlur(img)), and the
    custom-gradient overload with plain Sobel gradients reproduces Canny(img) bit for bit);
  * gradients: 3x3 Sobel (cv2.Sobel, ksize 3, CV_16S) of each channel, border BORDER_REPLICATE;
  * per pixel, the channel with the largest L1 magnitude |dx| + |dy| is used (dx, dy and magnitude
    of that one channel; on ties the first channel in memory order wins), i.e.
    Canny(rgb) == Canny(dx_sel, dy_sel, low, high) with that per-pixel selection;
  * then non-maximum suppression on the L1 magnitude and hysteresis (magnitude > high starts an edge,
    > low continues it, 8-connected); output 0 / 255;
  * for a grayscale-looking image (R = G = B) the result equals cv2.Canny(gray);
    for colour images it generally differs from Canny(cvtColor(RGB2GRAY)).
"""

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402

OUT = fc.FIX / "canny"
GEN = "scripts/make_canny_fixtures.py"
PAIRS = [(100, 200), (50, 150)]
SS = 4  # supersampling for anti-aliased shapes


def supersampled(w, h, bg, draw_fn):
    im = Image.new("RGB", (w * SS, h * SS), bg)
    draw_fn(ImageDraw.Draw(im), w * SS, h * SS)
    return np.asarray(im.resize((w, h), Image.Resampling.BOX)).copy()


def shapes():
    def draw(d, W, H):
        d.ellipse([0.08 * W, 0.1 * H, 0.5 * W, 0.52 * H], fill=(230, 60, 40))
        d.rectangle([0.55 * W, 0.15 * H, 0.9 * W, 0.45 * H], outline=(20, 40, 200), width=3 * SS)
        d.polygon([(0.2 * W, 0.92 * H), (0.45 * W, 0.58 * H), (0.7 * W, 0.9 * H)], fill=(40, 170, 60))
        d.ellipse([0.62 * W, 0.55 * H, 0.95 * W, 0.88 * H], fill=(120, 124, 128))  # near the background
        d.rectangle([0.05 * W, 0.6 * H, 0.22 * W, 0.95 * H], fill=(110, 165, 135))  # +45 green: mid edge
        d.rectangle([0.5 * W, 0.48 * H, 0.62 * W, 0.62 * H], fill=(140, 120, 135))  # +30 red, touches shapes
    return supersampled(96, 96, (110, 120, 135), draw)


def gradient_noise():
    rng = np.random.RandomState(11)
    h, w = 96, 128
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * y / 40.0))
    b = 255 * np.clip(4.0 - np.hypot(x - 80, y - 45) / 8.0, 0, 1)  # disc with a soft rim
    img = np.stack([r, g, b], -1) + rng.normal(0, 3.0, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def lines():
    img = np.full((80, 80, 3), 20, np.uint8)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.line([(5, 10), (74, 10)], fill=(255, 255, 255), width=1)
    d.line([(10, 15), (10, 70)], fill=(200, 220, 255), width=1)
    d.line([(15, 20), (70, 75)], fill=(255, 200, 100), width=1)
    d.line([(20, 70), (75, 55)], fill=(90, 255, 90), width=2)
    d.line([(30, 30), (60, 40)], fill=(60, 60, 70), width=1)  # low contrast
    for i in range(5):
        d.line([(50 + 4 * i, 15), (50 + 4 * i, 35)], fill=(180, 180, 180), width=1)  # fine grid
    for x, y in ((40, 60), (45, 62), (65, 25)):
        d.point((x, y), fill=(255, 255, 255))
    return np.asarray(im).copy()


def gray():
    rng = np.random.RandomState(12)
    def draw(d, W, H):
        d.ellipse([0.1 * W, 0.1 * H, 0.6 * W, 0.6 * H], fill=(200, 200, 200))
        d.rectangle([0.45 * W, 0.5 * H, 0.9 * W, 0.9 * H], fill=(60, 60, 60))
        d.ellipse([0.05 * W, 0.65 * H, 0.35 * W, 0.95 * H], fill=(173, 173, 173))  # +45: mid-strength edge
        d.rectangle([0.7 * W, 0.08 * H, 0.92 * W, 0.3 * H], fill=(158, 158, 158))  # +30: weak edge
    g = supersampled(64, 64, (128, 128, 128), draw)[..., 0].astype(np.float64)
    g += np.linspace(-40, 40, 64)[None, :] + rng.normal(0, 3.0, (64, 64))
    g = np.clip(np.round(g), 0, 255).astype(np.uint8)
    return np.stack([g, g, g], -1)


IMAGES = {"shapes-96x96": shapes, "gradient-noise-128x96": gradient_noise, "lines-80x80": lines,
          "gray-64x64": gray}


def canny_channel_max(rgb, low, high):
    """Per-pixel channel with the largest |dx|+|dy| (first on ties), then Canny on those gradients."""
    dx = np.stack([cv2.Sobel(rgb[..., c], cv2.CV_16S, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
                   for c in range(3)], -1)
    dy = np.stack([cv2.Sobel(rgb[..., c], cv2.CV_16S, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
                   for c in range(3)], -1)
    mag = np.abs(dx.astype(np.int32)) + np.abs(dy.astype(np.int32))
    sel = np.argmax(mag, axis=-1)[..., None]  # first maximum
    dxs = np.take_along_axis(dx, sel, -1)[..., 0].copy()
    dys = np.take_along_axis(dy, sel, -1)[..., 0].copy()
    return cv2.Canny(dxs, dys, low, high, L2gradient=False)


def main():
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    entries, facts = [], {}
    for name, fn in IMAGES.items():
        rgb = fn()
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert 64 <= min(rgb.shape[:2]) and max(rgb.shape[:2]) <= 128
        fc.save_png(OUT / f"{name}.png", rgb)
        rgb = np.asarray(Image.open(OUT / f"{name}.png").convert("RGB"))  # exactly what is stored
        gray_img = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        f = facts[name] = {}
        for low, high in PAIRS:
            edges = cv2.Canny(rgb, low, high)  # annotator: apertureSize 3, L2gradient False
            assert edges.dtype == np.uint8 and edges.shape == rgb.shape[:2]
            assert set(np.unique(edges)) <= {0, 255}
            assert np.array_equal(edges, cv2.Canny(rgb, low, high, apertureSize=3, L2gradient=False))
            out = OUT / f"{name}.canny-{low}-{high}.png"
            fc.save_png(out, edges)
            assert np.array_equal(np.asarray(Image.open(out)), edges)
            # --- facts
            assert np.array_equal(edges, canny_channel_max(rgb, low, high)), (name, low, high)
            bgr_same = bool(np.array_equal(edges, cv2.Canny(np.ascontiguousarray(rgb[..., ::-1]), low, high)))
            blur_diff = int((edges != cv2.Canny(cv2.GaussianBlur(rgb, (5, 5), 0), low, high)).sum())
            gray_diff = int((edges != cv2.Canny(gray_img, low, high)).sum())
            assert blur_diff > 0
            if name.startswith("gray"):
                assert gray_diff == 0
            f[f"{low}-{high}"] = {"edge_pixels": int((edges > 0).sum()), "differs_from_canny_gray_px": gray_diff,
                                  "differs_from_canny_blurred_px": blur_diff, "bgr_input_identical": bgr_same}
            entries.append({"input": f"{name}.png", "low": low, "high": high, "output": out.name})
            print(f"  {name:24s} ({low},{high}): {int((edges > 0).sum()):5d} edge px; vs gray {gray_diff}, "
                  f"vs blurred {blur_diff}, BGR same {bgr_same}")
    fc.write_json(OUT / "canny.json", {
        "generator": GEN,
        "versions": fc.versions(),
        "call": "cv2.Canny(rgb_uint8_HxWx3, low, high) (apertureSize 3, L2gradient False), as "
        "lllyasviel's ControlNet annotator/canny CannyDetector",
        "pairs": entries,
        "checked": {
            "no_blur": "Canny(img) reproduced exactly from plain 3x3 Sobel gradients; differs from Canny(GaussianBlur)",
            "gradient": "cv2.Sobel ksize 3 CV_16S per channel, BORDER_REPLICATE",
            "multichannel": "per pixel the channel with the largest |dx|+|dy| (first channel on ties) gives dx, dy",
            "after": "non-maximum suppression on |dx|+|dy|, hysteresis: > high seeds, > low extends (8-connected)",
            "grayscale_looking": "R=G=B input gives exactly Canny(gray)",
        },
        "per_image": facts,
    })
    print("files:")
    fc.list_files(fc.files_under(OUT))


if __name__ == "__main__":
    main()
