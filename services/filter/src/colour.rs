//! Colour management: an embedded ICC profile is applied at decode, so every op and encoder
//! works on sRGB, which is what an output without a profile is taken to be. Without this an
//! Adobe RGB or Display P3 photo loses saturation on the way through. An output that asks to
//! keep the profile (`keep_icc`, `strip=false`) and can hold one gets the pixels unconverted,
//! with the profile embedded.
//!
//! Little CMS does the work (`lcms2`), with relative colorimetric intent, libvips' default.
//! RGB profiles apply here, and CMYK ones to a CMYK JPEG's samples ([`CmykToSrgb`]); a grey
//! profile is left alone.

use lcms2::{ColorSpaceSignature, InfoType, Intent, Locale, PixelFormat, Profile, Transform};
use pixelmesh_pipeline::bitmap::Bitmap;

/// Largest embedded profile applied. Real ones are a few KB (sRGB 3 KB, a printer's CMYK
/// 0.5–2 MB); a bigger one is ignored rather than parsed.
pub const MAX_ICC_BYTES: usize = 4 << 20;

/// What became of an embedded profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Pixels converted from the named profile to sRGB.
    Converted(String),
    /// Already sRGB, or a colour space this does not convert: pixels as stored.
    Kept(String),
    /// Pixels as stored, the profile carried into the output.
    Embedded(String),
    /// The profile could not be used: pixels as stored, and why.
    Ignored(String),
}

impl Applied {
    /// A line for the image's analysis.
    pub fn describe(&self) -> String {
        match self {
            Applied::Converted(name) => format!("{name}, converted to sRGB"),
            Applied::Kept(name) => name.clone(),
            Applied::Embedded(name) => format!("{name}, kept and embedded in the output"),
            Applied::Ignored(reason) => format!("ignored: {reason}"),
        }
    }
}

/// What to do with `icc`, the profile embedded in `image`: with `keep`, an RGB profile that
/// reads is left unapplied and handed back for the encoder to embed; otherwise, and for any
/// other profile, as [`to_srgb`].
pub fn manage(image: &mut Bitmap, icc: Vec<u8>, keep: bool) -> (Applied, Option<Vec<u8>>) {
    let mut manager = Manager::new(icc, keep);
    manager.apply(image);
    manager.finish()
}

/// Converts `image` from the profile `icc` to sRGB in place. A profile that is corrupt is
/// ignored, never the image's failure: the pixels are still the best guess.
pub fn to_srgb(image: &mut Bitmap, icc: &[u8]) -> Applied {
    manage(image, icc.to_vec(), false).0
}

/// An embedded profile's handling, decided once and applied to every image given: an
/// animation's frames share their file's profile, so it is parsed and its transform built
/// once, not once a frame.
pub struct Manager {
    plan: Plan,
}

enum Plan {
    /// Pixels left as stored, for the reason given.
    Leave(Applied),
    /// Pixels left as stored, the profile handed back for the output to embed.
    Embed { name: String, icc: Vec<u8> },
    /// Pixels converted to sRGB; a transform for each pixel layout met, built when first met.
    Convert {
        profile: Profile,
        name: String,
        rgb: Option<Transform<u8, u8>>,
        rgba: Option<Transform<u8, u8>>,
    },
}

impl Manager {
    /// What becomes of `icc`: with `keep`, an RGB profile that reads is embedded; an sRGB
    /// one (under any of its usual names: IEC 61966-2.1, its v4 and compact variants) is what
    /// we convert to, so converting would only round; a profile that does not read, or is
    /// not RGB (a grey one), leaves the pixels as they are.
    pub fn new(icc: Vec<u8>, keep: bool) -> Manager {
        let plan = match open(&icc) {
            Err(ignored) => Plan::Leave(ignored),
            Ok((profile, name)) if profile.color_space() != ColorSpaceSignature::RgbData => {
                Plan::Leave(Applied::Kept(name))
            }
            Ok((_, name)) if keep => Plan::Embed { name, icc },
            Ok((_, name)) if name.contains("sRGB") => Plan::Leave(Applied::Kept(name)),
            Ok((profile, name)) => Plan::Convert {
                profile,
                name,
                rgb: None,
                rgba: None,
            },
        };
        Manager { plan }
    }

    /// Converts `image` in place when the plan is to convert.
    pub fn apply(&mut self, image: &mut Bitmap) {
        let Plan::Convert {
            profile,
            name,
            rgb,
            rgba,
        } = &mut self.plan
        else {
            return;
        };
        let (slot, format) = if image.has_alpha() {
            (rgba, PixelFormat::RGBA_8)
        } else {
            (rgb, PixelFormat::RGB_8)
        };
        let transform = match slot {
            Some(transform) => transform,
            None => match Transform::new(
                profile,
                format,
                &Profile::new_srgb(),
                format,
                Intent::RelativeColorimetric,
            ) {
                Ok(transform) => slot.insert(transform),
                Err(err) => {
                    let reason = format!("{name}: cannot convert it to sRGB: {err}");
                    self.plan = Plan::Leave(Applied::Ignored(reason));
                    return;
                }
            },
        };
        transform.transform_in_place(image.data_mut());
    }

    /// What was done, and the profile when the output is to embed it.
    pub fn finish(self) -> (Applied, Option<Vec<u8>>) {
        match self.plan {
            Plan::Leave(applied) => (applied, None),
            Plan::Embed { name, icc } => (Applied::Embedded(name), Some(icc)),
            Plan::Convert { name, .. } => (Applied::Converted(name), None),
        }
    }
}

/// A CMYK JPEG's conversion to sRGB through its CMYK profile, built before the samples are
/// decoded, so a profile that cannot do it sends the image to the formula before any work.
pub struct CmykToSrgb {
    transform: Transform<[u8; 4], [u8; 3]>,
    /// The profile's name, for the analysis.
    pub name: String,
}

impl CmykToSrgb {
    /// The transform from `icc`. `inverted` for an Adobe JPEG (one with an APP14 "Adobe"
    /// marker), whose samples Photoshop stores as 255 - ink, as libjpeg and libvips take them.
    /// `Err` with the reason when the profile cannot do it; the caller then converts without.
    pub fn new(icc: &[u8], inverted: bool) -> Result<CmykToSrgb, Applied> {
        let (profile, name) = open(icc)?;
        if profile.color_space() != ColorSpaceSignature::CmykData {
            return Err(Applied::Ignored(format!(
                "{name} is not a CMYK profile, and the image is CMYK"
            )));
        }
        let input = if inverted {
            PixelFormat::CMYK_8_REV
        } else {
            PixelFormat::CMYK_8
        };
        let transform = Transform::new(
            &profile,
            input,
            &Profile::new_srgb(),
            PixelFormat::RGB_8,
            Intent::RelativeColorimetric,
        )
        .map_err(|err| Applied::Ignored(format!("{name}: cannot convert it to sRGB: {err}")))?;
        Ok(CmykToSrgb { transform, name })
    }

    /// CMYK samples (4 bytes a pixel) as sRGB (3 bytes a pixel).
    pub fn convert(&self, cmyk: &[u8]) -> Vec<u8> {
        let (pixels, _) = cmyk.as_chunks::<4>();
        let mut rgb = vec![[0u8; 3]; pixels.len()];
        self.transform.transform_pixels(pixels, &mut rgb);
        rgb.into_flattened()
    }
}

/// The profile and its name, or why it is ignored.
fn open(icc: &[u8]) -> Result<(Profile, String), Applied> {
    if icc.len() > MAX_ICC_BYTES {
        return Err(Applied::Ignored(format!(
            "the embedded ICC profile is {} bytes, over the {MAX_ICC_BYTES}-byte cap",
            icc.len()
        )));
    }
    let profile = Profile::new_icc(icc).map_err(|err| {
        Applied::Ignored(format!(
            "the embedded ICC profile ({} bytes) is not readable: {err}",
            icc.len()
        ))
    })?;
    let name = profile
        .info(InfoType::Description, Locale::none())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unnamed ICC profile".to_string());
    Ok((profile, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_profile_is_ignored_and_the_pixels_kept() {
        let mut image = Bitmap::new(2, 1, false, vec![10, 20, 30, 40, 50, 60]).unwrap();
        let applied = to_srgb(&mut image, b"not an icc profile at all");
        assert!(
            matches!(&applied, Applied::Ignored(reason) if reason.contains("not readable")),
            "{applied:?}"
        );
        assert_eq!(image.data(), [10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn a_profile_over_the_cap_is_not_parsed() {
        let mut image = Bitmap::new(1, 1, false, vec![1, 2, 3]).unwrap();
        let applied = to_srgb(&mut image, &vec![0; MAX_ICC_BYTES + 1]);
        assert!(
            matches!(&applied, Applied::Ignored(reason) if reason.contains("cap")),
            "{applied:?}"
        );
    }

    #[test]
    fn srgb_is_kept_as_it_is() {
        let srgb = Profile::new_srgb().icc().unwrap();
        let mut image = Bitmap::new(1, 1, false, vec![200, 30, 40]).unwrap();
        assert!(matches!(to_srgb(&mut image, &srgb), Applied::Kept(_)));
        assert_eq!(image.data(), [200, 30, 40]);
    }

    /// Adobe RGB's primaries (D65, gamma 2.2), built here; the tests in codec read the real
    /// profile file.
    fn wide_rgb() -> Vec<u8> {
        let white = lcms2::CIExyY {
            x: 0.3127,
            y: 0.3290,
            Y: 1.0,
        };
        let primaries = lcms2::CIExyYTRIPLE {
            Red: lcms2::CIExyY {
                x: 0.64,
                y: 0.33,
                Y: 1.0,
            },
            Green: lcms2::CIExyY {
                x: 0.21,
                y: 0.71,
                Y: 1.0,
            },
            Blue: lcms2::CIExyY {
                x: 0.15,
                y: 0.06,
                Y: 1.0,
            },
        };
        let gamma = lcms2::ToneCurve::new(2.2);
        let mut wide = Profile::new_rgb(&white, &primaries, &[&gamma, &gamma, &gamma]).unwrap();
        let mut name = lcms2::MLU::new(1);
        name.set_text("Wide test RGB", Locale::none());
        wide.write_tag(
            lcms2::TagSignature::ProfileDescriptionTag,
            lcms2::Tag::MLU(&name),
        );
        wide.icc().unwrap()
    }

    #[test]
    fn a_wide_gamut_profile_is_converted_and_alpha_kept() {
        let icc = wide_rgb();
        // A saturated green and a 50 % alpha.
        let mut image = Bitmap::new(1, 1, true, vec![40, 200, 40, 128]).unwrap();
        assert_eq!(
            to_srgb(&mut image, &icc),
            Applied::Converted("Wide test RGB".into())
        );
        let pixel = image.data();
        // Adobe RGB's green is beyond sRGB's: the same numbers mean a greener green, so in
        // sRGB red and blue drop while green stays high.
        assert!(
            pixel[0] < 40 && pixel[2] < 40 && pixel[1] > 190,
            "{pixel:?}"
        );
        assert_eq!(pixel[3], 128, "alpha untouched");
    }

    #[test]
    fn one_manager_converts_every_frame_as_each_alone_would() {
        let icc = wide_rgb();
        let frames = [
            Bitmap::new(2, 1, false, vec![40, 200, 40, 250, 10, 90]).unwrap(),
            Bitmap::new(1, 1, true, vec![40, 200, 40, 128]).unwrap(),
            Bitmap::new(2, 1, false, vec![1, 2, 3, 120, 130, 140]).unwrap(),
        ];
        let mut manager = Manager::new(icc.clone(), false);
        for frame in &frames {
            let (mut shared, mut alone) = (frame.clone(), frame.clone());
            manager.apply(&mut shared);
            assert_eq!(
                to_srgb(&mut alone, &icc),
                Applied::Converted("Wide test RGB".into())
            );
            assert_ne!(shared.data(), frame.data(), "converted");
            assert_eq!(shared.data(), alone.data());
        }
        assert_eq!(
            manager.finish(),
            (Applied::Converted("Wide test RGB".into()), None)
        );

        // Kept: every frame as stored, the profile handed back once for the output.
        let mut manager = Manager::new(icc.clone(), true);
        for frame in &frames {
            let mut kept = frame.clone();
            manager.apply(&mut kept);
            assert_eq!(kept.data(), frame.data());
        }
        assert_eq!(
            manager.finish(),
            (Applied::Embedded("Wide test RGB".into()), Some(icc))
        );
    }
}
