//! `blur`: a true gaussian blur (separable), not a box or stack approximation, in integer
//! fixed point so that every worker computes the same bytes.
//!
//! The kernel reaches 3 sigma each side, which holds 99.7 % of the gaussian's weight; the edge
//! pixels are repeated outside the image (clamp), so borders do not darken. [`Blur::radius`] is
//! also the halo a tile needs for its blurred pixels to match the whole image's.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{self, Cost, Shape, ns};

pub(crate) const NAME: &str = "blur";

/// Beyond this the kernel (6 sigma + 1 wide) costs more than any sensible blur needs.
pub const MAX_SIGMA: f32 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blur {
    sigma: f32,
}

impl Blur {
    pub fn new(sigma: f32) -> Result<Blur, String> {
        // Written so NaN fails too.
        if !(sigma.is_finite() && sigma > 0.0 && sigma <= MAX_SIGMA) {
            return Err(format!("sigma must be > 0 and <= {MAX_SIGMA}, got {sigma}"));
        }
        Ok(Blur { sigma })
    }

    pub fn sigma(&self) -> f32 {
        self.sigma
    }

    /// How far a pixel's value reaches: `ceil(3 sigma)`.
    pub fn radius(&self) -> u32 {
        // sigma is at most 100, so the cast cannot truncate.
        (3.0 * self.sigma).ceil() as u32
    }

    /// Errs only when the task's deadline passes (see [`budget::expired`]), which the blur
    /// looks at once per group of rows.
    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        gaussian(image, &Kernel::new(self.sigma, self.radius())).ok_or_else(budget::stopped)
    }
}

/// Single-core nanoseconds per pixel for the budget's estimate (calibration in
/// `crate::budget`), for 3 bytes a pixel: a fixed part (conversions, the ring's loads) and a
/// part per unit of radius (a pair of taps in each pass), for each of the two arithmetics; the
/// same on 3840 and 10000 wide images (219 ns a pixel at sigma 100 on both). RGBA pays for
/// premultiplying and dividing by alpha, integer divisions per channel.
const U16_NS_PER_PIXEL: f64 = 1.5;
const U16_NS_PER_RADIUS: f64 = 0.4;
const U32_NS_PER_PIXEL: f64 = 10.0;
const U32_NS_PER_RADIUS: f64 = 0.85;
const ALPHA_NS_PER_PIXEL: f64 = 25.0;

/// The blur's time on `image` at `radius`; 4 bytes a pixel cost a third more than 3, and
/// alpha's conversions on top. Never less at a larger radius, across the switch to the u32
/// arithmetic too.
pub(crate) fn cpu_ns(image: Shape, radius: u32) -> f64 {
    let r = f64::from(radius);
    let u16_cost = U16_NS_PER_PIXEL + U16_NS_PER_RADIUS * r;
    let per_pixel = if radius as usize <= U16_MAX_RADIUS {
        u16_cost
    } else {
        (U32_NS_PER_PIXEL + U32_NS_PER_RADIUS * r).max(u16_cost)
    };
    let alpha = if image.channels == 4 {
        ALPHA_NS_PER_PIXEL
    } else {
        0.0
    };
    ns(
        image.pixels(),
        per_pixel * image.channels as f64 / 3.0 + alpha,
    )
}

/// The memory [`gaussian_in`] allocates beside the image, in bytes: the ring of `2 radius + 8`
/// source rows as u16 samples, a group of 8 padded rows, one blurred row, and the weights.
pub(crate) fn scratch_bytes(image: Shape, radius: u32) -> u64 {
    let r = u64::from(radius);
    let row = image.width.saturating_mul(image.channels);
    let group = (ROWS_PER_GROUP as u64).min(image.height);
    let ring = r.saturating_mul(2).saturating_add(group).min(image.height);
    let padded = row.saturating_add(2 * r * image.channels);
    let weights = (r + 1) * MAX_BLOCK as u64 * 2;
    (ring.saturating_mul(row))
        .saturating_add(group.saturating_mul(padded))
        .saturating_add(row)
        .saturating_mul(2)
        .saturating_add(weights)
}

impl Blur {}

// How the blur computes, and why.
//
// Tiles of one image are blurred by different workers with a `radius`-wide halo and stitched,
// and the result must be byte-identical to blurring the whole image, whatever CPU each worker
// has. Floating point can do that only with one fixed sequence of operations per pixel, which
// keeps it from wide vectors; integers are exact, so here every value is an integer function
// of its neighbours and the compiler may vectorize however it likes without changing a bit.
//
// * Samples are held in 1/128 steps of a level (`v = level x 128`, at most 32640), so that two
//   of them still fit a u16; alpha images are premultiplied into that form.
// * The kernel is integer weights summing to exactly 2^16 (see [`Kernel`]).
// * The vertical pass runs first, over whole rows (the vector-friendly direction), from a ring
//   of source rows converted to samples into a group of padded rows, which the horizontal pass
//   then blurs one by one. Output rows are written over source rows the ring has already
//   taken, so the blur allocates rows (2 radius + 8 in the ring), not an image.
// * Up to `U16_MAX_RADIUS` each tap is `floor(v x w / 2^16)` on u16 (`pmulhuw`, `umull`),
//   with a bias that centres the truncation error; beyond, sums are u32 and rounded once per
//   pass. Before the final rounding a value is within a few hundredths of a level of the exact
//   gaussian of the same radius (at most 0.04 measured on noise and photos, sigma 0.5 to 30),
//   so the bytes are at most one level off a float implementation, and only where the exact
//   value is that close to a half; the tests check the one level against an f64 reference.
// * On x86_64 the same code is compiled three times, for the baseline (SSE2), AVX2 and
//   AVX-512BW, and the widest the CPU has is picked at run time; aarch64 has NEON as its
//   baseline. The same integer operations give the same bytes in every build (tests check).

/// Fixed-point steps per level: samples are `level x 128`, at most 32640.
const SCALE_BITS: u32 = 7;

/// The largest radius (sigma <= 5.33) for the u16 arithmetic. Its truncation errors grow with
/// the number of taps, about radius / 256 of a level per pass; past this the u32 path is used.
const U16_MAX_RADIUS: usize = 16;

/// Values per block of the convolution loops, for each instruction set (the baseline is SSE2
/// on x86_64, NEON on aarch64): the sums stay in 8 vector registers while every tap of the
/// block is added, and per-tap costs (slicing, bounds checks) are paid once per block. Twice
/// as many spill on SSE2 (30 ms instead of 21 for the 4K bench); fewer slow AVX-512 down.
const BASELINE_BLOCK: usize = 64;
const AVX2_BLOCK: usize = 128;
const AVX512_BLOCK: usize = 256;
/// The largest of them: the length of each repeated weight.
const MAX_BLOCK: usize = AVX512_BLOCK;

/// Output rows the vertical pass computes together, block by block: a block of the ring's
/// rows is then read from the L2 cache once for the group and from L1 for the others, where
/// row by row every output row would read 2 radius + 1 rows from L2.
const ROWS_PER_GROUP: usize = 8;

/// The gaussian quantized: `weights[k]` is the weight of offsets `k` and `-k`, in units of
/// 2^-16, with `weights[0] + 2 x (weights[1] + … + weights[radius]) == 2^16` exactly, so flat
/// areas stay flat and the kernel is symmetric by construction.
#[derive(Debug, Clone, PartialEq)]
struct Kernel {
    weights: Vec<u32>,
}

impl Kernel {
    fn new(sigma: f32, radius: u32) -> Kernel {
        const ONE: u32 = 1 << 16;
        let sigma = f64::from(sigma);
        let raw: Vec<f64> = (0..=radius)
            .map(|k| exp_neg(f64::from(k) * f64::from(k) / (2.0 * sigma * sigma)))
            .collect();
        let total = raw[0] + 2.0 * raw[1..].iter().sum::<f64>();
        let exact: Vec<f64> = raw.iter().map(|g| g / total * f64::from(ONE)).collect();
        // Largest remainders: floor every weight, then hand the missing units to the weights
        // that lost most, so no weight is off by a whole unit or more. Side weights count
        // twice, so an odd remainder goes to the centre.
        let mut weights: Vec<u32> = exact.iter().map(|&w| w.floor() as u32).collect();
        let used = weights[0] + 2 * weights[1..].iter().sum::<u32>();
        let mut missing = ONE - used;
        if missing % 2 == 1 {
            weights[0] += 1;
            missing -= 1;
        }
        let mut by_loss: Vec<usize> = (1..exact.len()).collect();
        // A stable sort on a total order: the same taps on every machine.
        by_loss.sort_by(|&a, &b| {
            let loss = |k: usize| exact[k] - exact[k].floor();
            loss(b).total_cmp(&loss(a))
        });
        for &k in by_loss.iter().take(missing as usize / 2) {
            weights[k] += 1;
        }
        // The remainder is below 1 + 2 radius units, so the loop above placed all of it.
        debug_assert_eq!(weights[0] + 2 * weights[1..].iter().sum::<u32>(), ONE);
        Kernel { weights }
    }

    fn radius(&self) -> usize {
        self.weights.len() - 1
    }
}

/// `e^-x` for `x >= 0` from additions, multiplications and divisions only. std's `exp` may
/// differ in the last bit between platforms and Rust releases, and a weight that rounds the
/// other way would change pixels; these operations are exactly rounded everywhere.
fn exp_neg(x: f64) -> f64 {
    if x > 700.0 {
        return 0.0;
    }
    // e^-x = (e^-y)^(2^halvings) with y = x / 2^halvings <= 1/2, where the series converges
    // fast; halving is exact.
    let (mut y, mut halvings) = (x, 0);
    while y > 0.5 {
        y /= 2.0;
        halvings += 1;
    }
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for n in 1..=20 {
        term *= -y / f64::from(n);
        sum += term;
    }
    for _ in 0..halvings {
        sum *= sum;
    }
    sum
}

/// Which rows or columns a convolution step reads, as offsets into its source slice: the
/// centre run and each pair at distance k = 1..=radius (before, after).
struct Taps {
    centre: usize,
    pairs: Vec<(usize, usize)>,
}

/// [`Taps`] as slices of one output row's length.
struct Runs<'a> {
    centre: &'a [u16],
    pairs: Vec<(&'a [u16], &'a [u16])>,
}

/// The per-pass arithmetic, chosen from the radius alone, so every tile of an image uses the
/// same one.
enum Arithmetic {
    /// The kernel's weights as u16, the centre one halved (it is even, and may be 2^16; the
    /// side ones are below 2^16 / 3), and the bias that centres the truncation error.
    ///
    /// Each weight is repeated across a block, in memory the optimizer does not see filled,
    /// and loaded as a vector: from a broadcast scalar (or a constant array) LLVM widens the
    /// products to 32 bits under AVX2 and packs them back, twice the work.
    U16 {
        weights: Vec<[u16; MAX_BLOCK]>,
        bias: u16,
    },
    /// Centre and side weights, all below 2^16 at these radii.
    U32 { centre: u16, side: Vec<u16> },
}

impl Arithmetic {
    fn new(kernel: &Kernel) -> Arithmetic {
        let w = &kernel.weights;
        let narrow = |w: u32| u16::try_from(w).expect("weights used as u16 are below 2^16");
        if kernel.radius() <= U16_MAX_RADIUS {
            Arithmetic::U16 {
                weights: std::iter::once(w[0] / 2)
                    .chain(w[1..].iter().copied())
                    .map(|w| [narrow(w); MAX_BLOCK])
                    .collect(),
                // Each of the radius + 1 products drops a fraction in [0, 1): half of that
                // on average.
                bias: (w.len() / 2) as u16,
            }
        } else {
            Arithmetic::U32 {
                centre: narrow(w[0]),
                side: w[1..].iter().map(|&w| narrow(w)).collect(),
            }
        }
    }

    /// `outs[j][i]` = the kernel applied to `source` around `taps[j].centre + i` (and the
    /// pairs' offsets + i), for every j and i; samples and results in 1/128 levels. All
    /// outputs have one length. The rows go block by block, all rows of a block before the
    /// next, so a block's source values are read from memory once for all rows.
    ///
    /// Bounds (why the u16 sums cannot wrap): samples are at most 32640 + 8 (a u16 pass's
    /// bias), so a pair is below 2^16, and the products sum to at most the largest sample, as
    /// the weights sum to 2^16. The u32 sums are below 32648 x 2^16 < 2^31.
    #[inline(always)]
    fn convolve<const BLOCK: usize>(&self, source: &[u16], taps: &[Taps], outs: &mut [&mut [u16]]) {
        if outs.first().is_some_and(|out| out.len() >= BLOCK) {
            self.convolve_in::<BLOCK>(source, taps, outs);
        } else {
            self.convolve_in::<1>(source, taps, outs);
        }
    }

    /// [`Arithmetic::convolve`] in blocks of `BLOCK` values, which the rows must be as long as.
    #[inline(always)]
    fn convolve_in<const BLOCK: usize>(
        &self,
        source: &[u16],
        taps: &[Taps],
        outs: &mut [&mut [u16]],
    ) {
        let len = outs.first().map_or(0, |out| out.len());
        let run = |offset: usize| &source[offset..offset + len];
        let rows: Vec<Runs<'_>> = taps
            .iter()
            .map(|taps| Runs {
                centre: run(taps.centre),
                pairs: taps
                    .pairs
                    .iter()
                    .map(|&(before, after)| (run(before), run(after)))
                    .collect(),
            })
            .collect();
        // Blocks cover a row, the last one moved back to end at its end: it overlaps its
        // neighbour, which gets the same values again.
        for start in (0..len).step_by(BLOCK) {
            let at = start.min(len - BLOCK);
            for (runs, out) in rows.iter().zip(outs.iter_mut()) {
                let block: [u16; BLOCK] = match self {
                    Arithmetic::U16 { weights, bias } => u16_block(runs, weights, *bias, at),
                    Arithmetic::U32 { centre, side } => u32_block(runs, *centre, side, at),
                };
                out[at..at + BLOCK].copy_from_slice(&block);
            }
        }
    }
}

/// `floor(a x b / 2^16)`: `pmulhuw` on x86, `umull` and a narrowing shift on aarch64.
#[inline(always)]
fn mul_hi(a: u16, b: u16) -> u16 {
    ((u32::from(a) * u32::from(b)) >> 16) as u16
}

/// `N` values from `at` of `row`.
#[inline(always)]
fn lanes<const N: usize>(row: &[u16], at: usize) -> &[u16; N] {
    row[at..at + N].try_into().expect("N values")
}

/// The u16 arithmetic for the `N` values from `at`: the bias, then one truncated product per
/// tap (the pairs' samples added first).
#[inline(always)]
fn u16_block<const N: usize>(
    runs: &Runs<'_>,
    weights: &[[u16; MAX_BLOCK]],
    bias: u16,
    at: usize,
) -> [u16; N] {
    let centre = lanes::<N>(runs.centre, at);
    let (half_centre, side) = weights.split_first().expect("a centre weight");
    // Doubling the sample instead of halving the weight: the same product, as the centre
    // weight is even.
    let half_centre = lanes::<N>(half_centre, 0);
    let mut acc: [u16; N] =
        std::array::from_fn(|i| bias.wrapping_add(mul_hi(centre[i] << 1, half_centre[i])));
    for (&(before, after), weight) in runs.pairs.iter().zip(side) {
        let (before, after) = (lanes::<N>(before, at), lanes::<N>(after, at));
        let weight = lanes::<N>(weight, 0);
        for i in 0..N {
            acc[i] = acc[i].wrapping_add(mul_hi(before[i].wrapping_add(after[i]), weight[i]));
        }
    }
    acc
}

/// The u32 arithmetic for the `N` values from `at`: exact sums, rounded half up at the end.
#[inline(always)]
fn u32_block<const N: usize>(
    runs: &Runs<'_>,
    centre_weight: u16,
    side: &[u16],
    at: usize,
) -> [u16; N] {
    let centre = lanes::<N>(runs.centre, at);
    let mut acc: [u32; N] =
        std::array::from_fn(|i| u32::from(centre[i]) * u32::from(centre_weight));
    for (&(before, after), &weight) in runs.pairs.iter().zip(side) {
        let (before, after) = (lanes::<N>(before, at), lanes::<N>(after, at));
        for i in 0..N {
            let pair = before[i].wrapping_add(after[i]);
            acc[i] = acc[i].wrapping_add(u32::from(pair) * u32::from(weight));
        }
    }
    acc.map(|sum| ((sum + (1 << 15)) >> 16) as u16)
}

/// Blurs `image` in place: a separable gaussian in integer fixed point, the vertical pass first;
/// `None` if the task's deadline passed first.
///
/// Edges are clamped (the border pixel repeats). Alpha images are blurred premultiplied, so
/// transparent pixels (often black) do not bleed into their visible neighbours.
fn gaussian(image: Bitmap, kernel: &Kernel) -> Option<Bitmap> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512BW, the one target feature `gaussian_avx512` enables.
        let blurred = unsafe { gaussian_avx512(image, kernel) };
        return blurred;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2, the one target feature `gaussian_avx2` enables.
        let blurred = unsafe { gaussian_avx2(image, kernel) };
        return blurred;
    }
    gaussian_in::<BASELINE_BLOCK>(image, kernel)
}

/// [`gaussian_in`] compiled for 512-bit vectors: four times the values per instruction of
/// the x86_64 baseline (SSE2), and the same integer results (`vector_widths_agree` checks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn gaussian_avx512(image: Bitmap, kernel: &Kernel) -> Option<Bitmap> {
    gaussian_in::<AVX512_BLOCK>(image, kernel)
}

/// [`gaussian_in`] compiled for 256-bit vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gaussian_avx2(image: Bitmap, kernel: &Kernel) -> Option<Bitmap> {
    gaussian_in::<AVX2_BLOCK>(image, kernel)
}

/// [`gaussian`] for whatever instruction set the caller is compiled for, the convolutions in
/// blocks of `BLOCK` values: everything in the row loop is inlined into it.
#[inline(always)]
fn gaussian_in<const BLOCK: usize>(image: Bitmap, kernel: &Kernel) -> Option<Bitmap> {
    let (width, height, alpha) = (image.width(), image.height(), image.has_alpha());
    let channels = image.channels();
    let arithmetic = Arithmetic::new(kernel);
    let r = kernel.radius();
    let row_len = width as usize * channels;
    let last_row = height as usize - 1;
    let mut data = image.into_data();

    // The source rows a group of output rows needs (r above the first to r below the last),
    // as samples.
    let group = ROWS_PER_GROUP.min(height as usize);
    let ring_len = (2 * r + group).min(height as usize);
    let mut ring = vec![0u16; ring_len * row_len];
    let slot = |row: usize| (row % ring_len) * row_len;
    // The group's vertically blurred rows with r edge pixels repeated each side, and the
    // blurred form of one of them.
    let pad = r * channels;
    let padded_len = row_len + 2 * pad;
    let mut padded = vec![0u16; group * padded_len];
    let mut blurred = vec![0u16; row_len];
    let across = [Taps {
        centre: pad,
        pairs: (1..=r)
            .map(|k| (pad - k * channels, pad + k * channels))
            .collect(),
    }];
    let mut down: Vec<Taps> = (0..group)
        .map(|_| Taps {
            centre: 0,
            pairs: vec![(0, 0); r],
        })
        .collect();

    let mut loaded = 0usize;
    for first in (0..=last_row).step_by(group) {
        // Once per group of rows, outside the vector loops: a clock read per few
        // milliseconds of work on a wide image.
        if budget::expired() {
            return None;
        }
        let rows = group.min(last_row + 1 - first);
        // Row first + rows - 1 + r is the last one the group needs, and row first - r the
        // oldest, which the ring still holds; rows above it are already written over.
        while loaded <= (first + rows - 1 + r).min(last_row) {
            let at = slot(loaded);
            to_samples(
                &data[loaded * row_len..][..row_len],
                &mut ring[at..at + row_len],
                alpha,
            );
            loaded += 1;
        }
        for (y, taps) in (first..first + rows).zip(&mut down) {
            taps.centre = slot(y);
            for (k, pair) in (1..=r).zip(&mut taps.pairs) {
                *pair = (slot(y.saturating_sub(k)), slot((y + k).min(last_row)));
            }
        }
        let mut middles: Vec<&mut [u16]> = padded
            .chunks_exact_mut(padded_len)
            .take(rows)
            .map(|row| &mut row[pad..pad + row_len])
            .collect();
        arithmetic.convolve::<BLOCK>(&ring, &down[..rows], &mut middles);
        for (y, row) in (first..).zip(padded.chunks_exact_mut(padded_len).take(rows)) {
            let (left, rest) = row.split_at_mut(pad);
            let (middle, right) = rest.split_at_mut(row_len);
            let (first_pixel, last_pixel) = (&middle[..channels], &middle[row_len - channels..]);
            for pixel in left.chunks_exact_mut(channels) {
                pixel.copy_from_slice(first_pixel);
            }
            for pixel in right.chunks_exact_mut(channels) {
                pixel.copy_from_slice(last_pixel);
            }
            arithmetic.convolve::<BLOCK>(row, &across, &mut [&mut blurred]);
            from_samples(&blurred, &mut data[y * row_len..][..row_len], alpha);
        }
    }
    Some(Bitmap::new(width, height, alpha, data).expect("same size as the input"))
}

/// One row of pixels to samples (1/128 levels), premultiplied when there is alpha.
#[inline(always)]
fn to_samples(row: &[u8], out: &mut [u16], alpha: bool) {
    if alpha {
        for (dst, pixel) in out.chunks_exact_mut(4).zip(row.chunks_exact(4)) {
            let a = u32::from(pixel[3]);
            for (d, &c) in dst.iter_mut().zip(&pixel[..3]) {
                // c x a / 255 in 1/128 levels, rounded (255 is odd, so there are no ties).
                *d = ((u32::from(c) * a * 128 + 127) / 255) as u16;
            }
            dst[3] = (a << SCALE_BITS) as u16;
        }
    } else {
        for (d, &v) in out.iter_mut().zip(row) {
            *d = u16::from(v) << SCALE_BITS;
        }
    }
}

/// One row of blurred samples back to pixels, rounding half up; with alpha the colour is
/// divided by the blurred alpha before either is rounded.
#[inline(always)]
fn from_samples(samples: &[u16], row: &mut [u8], alpha: bool) {
    if alpha {
        for (pixel, value) in row.chunks_exact_mut(4).zip(samples.chunks_exact(4)) {
            let a = u32::from(value[3]);
            for (p, &c) in pixel[..3].iter_mut().zip(&value[..3]) {
                // Premultiplied colour never exceeds alpha (it is below it before the blur, and
                // each tap's product is monotonic in the sample), so this is at most 255; where
                // alpha is 0 the colour is too, and comes out black.
                let colour = (u32::from(c) * 255 + a / 2).checked_div(a).unwrap_or(0);
                *p = colour.min(255) as u8;
            }
            pixel[3] = to_u8(value[3]);
        }
    } else {
        for (p, &v) in row.iter_mut().zip(samples) {
            *p = to_u8(v);
        }
    }
}

/// A sample (1/128 levels) to a level, rounding half up; overshoot clamps to 255. In u16
/// (samples are at most 32656), which halves the vector work against u32.
#[inline(always)]
fn to_u8(sample: u16) -> u8 {
    (sample.wrapping_add(1 << (SCALE_BITS - 1)) >> SCALE_BITS).min(255) as u8
}

impl Operator for Blur {
    const SPEC: Spec = Spec::new(
        NAME,
        "Blur",
        "Gaussian blur.",
        &[Field::float("sigma", "Sigma", (0.1, MAX_SIGMA as f64, 0.1))
            .above_min()
            .with_default("2")
            .required()],
    );

    type Proto = v1::Blur;

    fn from_fields(fields: &Fields<'_>) -> Result<Blur, String> {
        let sigma = fields.number("sigma")?.ok_or("sigma is required")?;
        // Out-of-range f64s become infinite f32s, which validation rejects.
        Blur::new(sigma as f32)
    }

    fn from_proto(p: &v1::Blur) -> Result<Blur, String> {
        Blur::new(p.sigma)
    }

    fn to_proto(&self) -> v1::Blur {
        v1::Blur { sigma: self.sigma }
    }

    fn params(&self) -> Vec<(&'static str, serde_json::Value)> {
        vec![("sigma", super::json::number(self.sigma))]
    }

    /// What the op costs (see `crate::budget`): the image is blurred in place, through rows
    /// (see [`scratch_bytes`]).
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost {
            peak_bytes: image
                .bytes()
                .saturating_add(scratch_bytes(image, self.radius())),
            cpu_ns: cpu_ns(image, self.radius()),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        Some(self.radius())
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        self.apply(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_is_validated() {
        assert!(Blur::new(0.01).is_ok());
        assert!(Blur::new(100.0).is_ok());
        for bad in [0.0, -1.0, 100.5, f32::NAN, f32::INFINITY] {
            let err = Blur::new(bad).unwrap_err();
            assert!(
                err.starts_with("sigma must be > 0 and <= 100, got "),
                "{err}"
            );
        }
    }

    #[test]
    fn flat_image_stays_flat_and_edges_do_not_darken() {
        for sigma in [0.3, 3.0, 12.0] {
            for level in [0, 1, 127, 180, 254, 255] {
                let image = Bitmap::new(40, 30, false, vec![level; 40 * 30 * 3]).unwrap();
                let out = Blur::new(sigma).unwrap().apply(image.clone()).unwrap();
                assert_eq!(out, image, "sigma {sigma} level {level}");
            }
        }
        let opaque = Bitmap::new(9, 5, true, [200, 10, 90, 255].repeat(45)).unwrap();
        assert_eq!(
            Blur::new(2.0).unwrap().apply(opaque.clone()).unwrap(),
            opaque
        );
    }

    #[test]
    fn blur_spreads_a_dot_symmetrically() {
        let (w, h) = (21u32, 21u32);
        let mut data = vec![0u8; (w * h * 3) as usize];
        let centre = ((10 * w + 10) * 3) as usize;
        data[centre..centre + 3].copy_from_slice(&[255, 255, 255]);
        let out = Blur::new(1.5)
            .unwrap()
            .apply(Bitmap::new(w, h, false, data).unwrap())
            .unwrap();
        let at = |x: u32, y: u32| out.data()[((y * w + x) * 3) as usize];
        assert!(at(10, 10) < 255 && at(10, 10) > at(11, 10));
        assert!(at(11, 10) > 0);
        assert_eq!(at(9, 10), at(11, 10));
        assert_eq!(at(10, 9), at(10, 11));
        assert_eq!(at(0, 0), 0);
    }

    #[test]
    fn kernels_wider_than_the_image_are_fine() {
        for (w, h) in [(1, 1), (1, 7), (5, 1), (3, 2)] {
            for alpha in [false, true] {
                let channels = if alpha { 4 } else { 3 };
                let data = (0..w * h * channels)
                    .map(|i| (i * 37 % 256) as u8)
                    .collect();
                let image = Bitmap::new(w, h, alpha, data).unwrap();
                for sigma in [1.0, 100.0] {
                    let out = Blur::new(sigma).unwrap().apply(image.clone()).unwrap();
                    assert_eq!((out.width(), out.height()), (w, h));
                }
            }
        }
    }

    #[test]
    fn transparent_pixels_do_not_bleed_colour() {
        // Opaque white next to transparent black: premultiplied blurring keeps the visible
        // colour white, only alpha fades.
        let data = (0..16 * 4)
            .flat_map(|i| {
                if i % 16 < 8 {
                    [255, 255, 255, 255]
                } else {
                    [0, 0, 0, 0]
                }
            })
            .collect();
        let out = Blur::new(2.0)
            .unwrap()
            .apply(Bitmap::new(16, 4, true, data).unwrap())
            .unwrap();
        let edge = &out.data()[8 * 4..8 * 4 + 4];
        assert!(edge[3] > 0 && edge[3] < 255, "{edge:?}");
        assert_eq!(&edge[..3], &[255, 255, 255], "{edge:?}");
    }

    #[test]
    fn kernels_are_symmetric_gaussians_summing_to_one() {
        for sigma in [0.01, 0.3, 0.6, 1.0, 2.0, 2.5, 5.33, 5.34, 10.0, 37.0, 100.0] {
            let blur = Blur::new(sigma).unwrap();
            let kernel = Kernel::new(sigma, blur.radius());
            let w = &kernel.weights;
            assert_eq!(kernel.radius(), blur.radius() as usize);
            assert_eq!(
                w[0] + 2 * w[1..].iter().sum::<u32>(),
                1 << 16,
                "sigma {sigma}"
            );
            assert!(w.windows(2).all(|p| p[0] >= p[1]), "sigma {sigma}: {w:?}");
            // Each weight within one unit of the exact normalized gaussian.
            let g: Vec<f64> = (0..w.len())
                .map(|k| (-((k * k) as f64) / (2.0 * f64::from(sigma).powi(2))).exp())
                .collect();
            let total = g[0] + 2.0 * g[1..].iter().sum::<f64>();
            for (k, (&q, g)) in w.iter().zip(&g).enumerate() {
                let exact = g / total * 65536.0;
                assert!((f64::from(q) - exact).abs() < 1.0, "sigma {sigma} k {k}");
            }
        }
        assert_eq!(Kernel::new(0.01, 1).weights, [1 << 16, 0]);
    }

    #[test]
    fn exp_neg_matches_std() {
        for i in 0..1890 {
            let x = f64::from(i) * 0.37;
            let (ours, std) = (exp_neg(x), (-x).exp());
            assert!(
                (ours - std).abs() <= 1e-12 * std,
                "x {x}: {ours} against {std}"
            );
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(5000.0), 0.0);
    }

    /// Blocks and one value at a time give the same values: integer arithmetic does not
    /// depend on how it is vectorized. Checked for both arithmetics on data that reaches the
    /// sample bounds.
    #[test]
    fn blocks_match_one_value_at_a_time() {
        let mut state = 0x2545_f491_u32;
        let source: Vec<u16> = (0..3000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                [0, 32640, (state % 32641) as u16][state as usize % 3]
            })
            .collect();
        for sigma in [0.5, 2.0, 5.0, 9.0] {
            let kernel = Kernel::new(sigma, Blur::new(sigma).unwrap().radius());
            let r = kernel.radius();
            let taps = Taps {
                centre: 3 * r + 7,
                pairs: (1..=r)
                    .map(|k| (3 * r + 7 - 3 * k, 3 * r + 7 + 3 * k))
                    .collect(),
            };
            let arithmetic = Arithmetic::new(&kernel);
            let taps = [taps];
            type Convolve = fn(&Arithmetic, &[u16], &[Taps], &mut [&mut [u16]]);
            let convolved = |convolve: Convolve| {
                let mut out = vec![0u16; 1000];
                convolve(&arithmetic, &source, &taps, &mut [&mut out]);
                out
            };
            let one = convolved(Arithmetic::convolve_in::<1>);
            assert_eq!(convolved(Arithmetic::convolve_in::<BASELINE_BLOCK>), one);
            assert_eq!(convolved(Arithmetic::convolve_in::<AVX2_BLOCK>), one);
            assert_eq!(convolved(Arithmetic::convolve_in::<AVX512_BLOCK>), one);
        }
    }

    /// Every build gives the bytes of the one-value-at-a-time build: `gaussian` (the widest
    /// vectors this CPU has), the x86_64 baseline or aarch64 build, and AVX2 where the CPU has
    /// it. Rows of 300 and 400 values fill blocks of every width.
    #[test]
    fn vector_widths_agree() {
        for alpha in [false, true] {
            for (w, h) in [(100, 31), (67, 45), (5, 9), (300, 3)] {
                let image = noise(w, h, alpha);
                for sigma in [0.3, 2.0, 4.0, 7.5] {
                    let kernel = Kernel::new(sigma, Blur::new(sigma).unwrap().radius());
                    let expected = gaussian_in::<1>(image.clone(), &kernel);
                    let case = format!("{w}x{h} alpha {alpha} sigma {sigma}");
                    assert!(gaussian(image.clone(), &kernel) == expected, "{case}");
                    let baseline = gaussian_in::<BASELINE_BLOCK>(image.clone(), &kernel);
                    assert!(baseline == expected, "{case}");
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        #[allow(unsafe_code)]
                        // SAFETY: the CPU has AVX2.
                        let avx2 = unsafe { gaussian_avx2(image.clone(), &kernel) };
                        assert!(avx2 == expected, "{case}");
                    }
                }
            }
        }
    }

    /// A straightforward gaussian in f64 with the same radius, clamped edges and premultiplied
    /// alpha, rounded half up.
    fn reference(image: &Bitmap, sigma: f32) -> Vec<u8> {
        let r = Blur::new(sigma).unwrap().radius() as i64;
        let s = f64::from(sigma);
        let g: Vec<f64> = (-r..=r)
            .map(|k| (-((k * k) as f64) / (2.0 * s * s)).exp())
            .collect();
        let total: f64 = g.iter().sum();
        let g: Vec<f64> = g.iter().map(|g| g / total).collect();
        let (w, h, ch) = (
            image.width() as i64,
            image.height() as i64,
            image.channels() as i64,
        );
        let alpha = image.has_alpha();
        let at = |x: i64, y: i64, c: i64| image.data()[((y * w + x) * ch + c) as usize];
        let premultiplied: Vec<f64> = (0..w * h * ch)
            .map(|i| {
                let (pixel, c) = (i / ch, i % ch);
                let (x, y) = (pixel % w, pixel / w);
                let value = f64::from(at(x, y, c));
                if alpha && c < 3 {
                    value * f64::from(at(x, y, 3)) / 255.0
                } else {
                    value
                }
            })
            .collect();
        let pass = |src: &[f64], dx: i64, dy: i64| -> Vec<f64> {
            (0..w * h * ch)
                .map(|i| {
                    let (pixel, c) = (i / ch, i % ch);
                    let (x, y) = (pixel % w, pixel / w);
                    (-r..=r)
                        .map(|k| {
                            let sx = (x + k * dx).clamp(0, w - 1);
                            let sy = (y + k * dy).clamp(0, h - 1);
                            g[(k + r) as usize] * src[((sy * w + sx) * ch + c) as usize]
                        })
                        .sum()
                })
                .collect()
        };
        let blurred = pass(&pass(&premultiplied, 1, 0), 0, 1);
        let round = |v: f64| (v + 0.5).floor().clamp(0.0, 255.0) as u8;
        blurred
            .chunks_exact(ch as usize)
            .flat_map(|p| {
                let mut out: Vec<u8> = p.iter().map(|&v| round(v)).collect();
                if alpha {
                    for c in 0..3 {
                        out[c] = if p[3] > 0.0 {
                            round(p[c] * 255.0 / p[3])
                        } else {
                            0
                        };
                    }
                }
                out
            })
            .collect()
    }

    fn noise(width: u32, height: u32, alpha: bool) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let mut state = 0x9e37_79b9_u32;
        let data = (0..width * height * channels)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if alpha && i % 4 == 3 {
                    // Mostly opaque, some partly transparent.
                    [255, 255, 200, (state % 256) as u8][(state >> 8) as usize % 4]
                } else {
                    // Extremes as well as everything between.
                    [0, 255, (state % 256) as u8][(state >> 8) as usize % 3]
                }
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
    }

    /// Largest difference from the reference, over colour channels where the blurred alpha is
    /// at least `min_alpha` and over alpha everywhere; and how many values differ at all.
    fn compare(image: &Bitmap, sigma: f32, min_alpha: u8) -> (u8, usize) {
        let ours = Blur::new(sigma).unwrap().apply(image.clone()).unwrap();
        let expected = reference(image, sigma);
        let ch = image.channels();
        let mut worst = 0;
        let mut differing = 0;
        for (o, e) in ours.data().chunks_exact(ch).zip(expected.chunks_exact(ch)) {
            for c in 0..ch {
                let counted = ch == 3 || c == 3 || e[3] >= min_alpha;
                if counted {
                    worst = worst.max(o[c].abs_diff(e[c]));
                    differing += usize::from(o[c] != e[c]);
                }
            }
        }
        (worst, differing)
    }

    #[test]
    fn within_one_level_of_an_exact_gaussian() {
        // Noise with the extremes is the worst case for the integer weights' rounding.
        for sigma in [0.01, 0.4, 0.8, 1.0, 1.5, 2.0, 3.3, 5.3, 5.4, 8.0, 20.0] {
            let image = noise(61, 47, false);
            let (worst, differing) = compare(&image, sigma, 0);
            assert!(worst <= 1, "sigma {sigma}: off by {worst}");
            // Off by one only where the exact value is within a fraction of a level of .5.
            assert!(
                differing * 50 < image.data().len(),
                "sigma {sigma}: {differing}"
            );
        }
    }

    #[test]
    fn within_one_level_of_an_exact_gaussian_with_alpha() {
        // Colour divided by a small alpha magnifies any error; from half opacity up the
        // premultiplied arithmetic keeps to one level.
        for sigma in [0.5, 2.0, 6.0] {
            let (worst, _) = compare(&noise(53, 41, true), sigma, 128);
            assert!(worst <= 1, "sigma {sigma}: off by {worst}");
        }
    }

    #[test]
    fn within_one_level_of_an_exact_gaussian_on_a_photo() {
        let bytes = crate::testdata::corpus("kite-2560x1600.jpg");
        // Any JPEG decoder will do: the test is about the blur on real content.
        let photo = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let (w, h) = (160usize, 120usize);
        let stride = photo.width() as usize * 3;
        let (left, top) = (1200 * 3, 700);
        let data = (top..top + h)
            .flat_map(|y| &photo.as_raw()[y * stride + left..][..w * 3])
            .copied()
            .collect();
        let crop = Bitmap::new(w as u32, h as u32, false, data).unwrap();
        for sigma in [0.8, 2.0, 10.0] {
            let (worst, differing) = compare(&crop, sigma, 0);
            assert!(worst <= 1, "sigma {sigma}: off by {worst}");
            assert!(differing * 100 < w * h * 3, "sigma {sigma}: {differing}");
        }
    }
}
