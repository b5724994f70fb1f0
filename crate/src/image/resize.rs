//! Resampling and grayscale as Pillow does them, so that a control image or mask that
//! diffusers would resize with `Image.resize(…, LANCZOS)` or convert with `convert("L")`
//! gives the same bytes here.

use super::Image;

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// For each output position along an axis of `input` values resampled to `output`: the
/// first input index and the fixed-point weights (Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let weights: Vec<f64> = (min..max)
                .map(|x| lanczos((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * (1i64 << PRECISION_BITS) as f64;
                    if scaled < 0.0 {
                        (scaled - 0.5) as i64
                    } else {
                        (scaled + 0.5) as i64
                    }
                })
                .collect();
            (min, fixed)
        })
        .collect()
}

/// A fixed-point sum back to 8 bits.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `image` resized to `width` × `height` with Lanczos (a = 3), as Pillow's
/// `Image.resize((width, height), Image.LANCZOS)`: a horizontal pass then a vertical one,
/// each rounded to 8 bits.
pub fn resize_lanczos(image: &Image, width: usize, height: usize) -> Image {
    if image.width == width && image.height == height {
        return Image {
            width,
            height,
            rgb: image.rgb.clone(),
        };
    }
    let (w, h) = (image.width, image.height);
    let mut horizontal = image.rgb.clone();
    if w != width {
        let coeffs = coefficients(w, width);
        horizontal = vec![0; width * h * 3];
        for y in 0..h {
            for (x, (min, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let sum = k
                        .iter()
                        .enumerate()
                        .fold(1i64 << (PRECISION_BITS - 1), |s, (j, k)| {
                            s + image.rgb[(y * w + min + j) * 3 + c] as i64 * k
                        });
                    horizontal[(y * width + x) * 3 + c] = clip8(sum);
                }
            }
        }
    }
    let mut out = horizontal.clone();
    if h != height {
        let coeffs = coefficients(h, height);
        out = vec![0; width * height * 3];
        for (y, (min, k)) in coeffs.iter().enumerate() {
            for x in 0..width {
                for c in 0..3 {
                    let sum = k
                        .iter()
                        .enumerate()
                        .fold(1i64 << (PRECISION_BITS - 1), |s, (j, k)| {
                            s + horizontal[((min + j) * width + x) * 3 + c] as i64 * k
                        });
                    out[(y * width + x) * 3 + c] = clip8(sum);
                }
            }
        }
    }
    Image {
        width,
        height,
        rgb: out,
    }
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma, `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
pub fn grayscale(image: &Image) -> Vec<u8> {
    image
        .rgb
        .chunks_exact(3)
        .map(|p| {
            let l = 19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000;
            (l >> 16) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_same_size_is_a_copy() {
        for (input, output) in [(48, 32), (40, 32), (32, 48), (7, 3)] {
            for (_, k) in coefficients(input, output) {
                let sum: i64 = k.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{input}->{output}"
                );
            }
        }
        let image = Image {
            width: 2,
            height: 1,
            rgb: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(resize_lanczos(&image, 2, 1).rgb, image.rgb);
        // A flat image stays flat at any size.
        let flat = Image {
            width: 9,
            height: 7,
            rgb: vec![77; 9 * 7 * 3],
        };
        assert!(resize_lanczos(&flat, 4, 12).rgb.iter().all(|&v| v == 77));
    }

    #[test]
    fn grayscale_is_pillows_luma() {
        let image = Image {
            width: 3,
            height: 1,
            rgb: vec![255, 255, 255, 255, 0, 0, 10, 200, 30],
        };
        // Pillow 13: L of white 255, of pure red 76, of (10, 200, 30) 124.
        assert_eq!(grayscale(&image), [255, 76, 124]);
    }

    #[test]
    fn lanczos_matches_pillow() {
        // numpy.random.seed(0); (rand(5, 7, 3) * 255).astype(uint8), resized to 4×3 by
        // Pillow 13 with Image.LANCZOS.
        let input: [[[u8; 3]; 7]; 5] = [
            [
                [139, 182, 153],
                [138, 108, 164],
                [111, 227, 245],
                [97, 201, 134],
                [144, 236, 18],
                [22, 5, 212],
                [198, 221, 249],
            ],
            [
                [203, 117, 199],
                [30, 163, 36],
                [240, 133, 105],
                [67, 197, 116],
                [144, 4, 157],
                [156, 157, 240],
                [173, 91, 111],
            ],
            [
                [177, 15, 170],
                [171, 53, 32],
                [80, 92, 145],
                [111, 252, 26],
                [53, 41, 166],
                [64, 118, 62],
                [40, 28, 167],
            ],
            [
                [35, 50, 94],
                [209, 24, 213],
                [24, 248, 119],
                [249, 154, 188],
                [9, 72, 30],
                [75, 30, 81],
                [105, 16, 176],
            ],
            [
                [144, 67, 133],
                [23, 146, 236],
                [81, 170, 33],
                [182, 73, 46],
                [149, 5, 211],
                [1, 172, 68],
                [187, 245, 63],
            ],
        ];
        let pillow: [[[u8; 3]; 4]; 3] = [
            [
                [139, 147, 147],
                [125, 187, 144],
                [110, 140, 122],
                [147, 125, 209],
            ],
            [
                [151, 40, 117],
                [125, 157, 97],
                [84, 111, 114],
                [82, 43, 135],
            ],
            [
                [87, 74, 169],
                [119, 165, 120],
                [112, 62, 102],
                [82, 127, 93],
            ],
        ];
        let image = Image {
            width: 7,
            height: 5,
            rgb: input.iter().flatten().flatten().copied().collect(),
        };
        let expected: Vec<u8> = pillow.iter().flatten().flatten().copied().collect();
        assert_eq!(resize_lanczos(&image, 4, 3).rgb, expected);
    }
}
