//! Where a smaller rectangle sits inside a larger one: the centre, an edge or a corner
//! ([`Gravity`], shared by `crop`, `resize` and `watermark`), or, for the crops, where the
//! content is ([`Anchor`]: smart, entropy, face).

use pixelmesh_proto::v1;

use super::faces;
use super::interest::{self, Strategy};
use super::json::quoted;
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape, ns};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gravity {
    #[default]
    Centre,
    North,
    South,
    East,
    West,
    NorthEast,
    NorthWest,
    SouthEast,
    SouthWest,
}

impl Gravity {
    /// Every gravity, in the order of [`Gravity::NAMES`].
    pub const ALL: [Gravity; 9] = [
        Gravity::Centre,
        Gravity::North,
        Gravity::South,
        Gravity::East,
        Gravity::West,
        Gravity::NorthEast,
        Gravity::NorthWest,
        Gravity::SouthEast,
        Gravity::SouthWest,
    ];

    pub const NAMES: &[&str] = &[
        "centre",
        "north",
        "south",
        "east",
        "west",
        "north_east",
        "north_west",
        "south_east",
        "south_west",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gravity::Centre => "centre",
            Gravity::North => "north",
            Gravity::South => "south",
            Gravity::East => "east",
            Gravity::West => "west",
            Gravity::NorthEast => "north_east",
            Gravity::NorthWest => "north_west",
            Gravity::SouthEast => "south_east",
            Gravity::SouthWest => "south_west",
        }
    }

    pub(crate) fn from_name(name: &str) -> Result<Gravity, String> {
        Ok(match name {
            // Both spellings: the American one is what most APIs use.
            "centre" | "center" => Gravity::Centre,
            "north" => Gravity::North,
            "south" => Gravity::South,
            "east" => Gravity::East,
            "west" => Gravity::West,
            "north_east" => Gravity::NorthEast,
            "north_west" => Gravity::NorthWest,
            "south_east" => Gravity::SouthEast,
            "south_west" => Gravity::SouthWest,
            other => {
                return Err(format!(
                    "gravity must be one of {}, got {}",
                    Gravity::NAMES.join(", "),
                    quoted(other)
                ));
            }
        })
    }

    /// `None` for unspecified.
    pub(crate) fn from_proto(value: i32) -> Result<Option<Gravity>, String> {
        Ok(Some(match v1::Gravity::try_from(value) {
            Ok(v1::Gravity::Unspecified) => return Ok(None),
            Ok(v1::Gravity::Centre) => Gravity::Centre,
            Ok(v1::Gravity::North) => Gravity::North,
            Ok(v1::Gravity::South) => Gravity::South,
            Ok(v1::Gravity::East) => Gravity::East,
            Ok(v1::Gravity::West) => Gravity::West,
            Ok(v1::Gravity::NorthEast) => Gravity::NorthEast,
            Ok(v1::Gravity::NorthWest) => Gravity::NorthWest,
            Ok(v1::Gravity::SouthEast) => Gravity::SouthEast,
            Ok(v1::Gravity::SouthWest) => Gravity::SouthWest,
            Ok(content @ (v1::Gravity::Smart | v1::Gravity::Entropy | v1::Gravity::Face)) => {
                return Err(format!(
                    "gravity {} places crops only, not this op",
                    content
                        .as_str_name()
                        .trim_start_matches("GRAVITY_")
                        .to_lowercase()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "gravity must be one of {}, got {value}",
                    Gravity::NAMES.join(", ")
                ));
            }
        }))
    }

    pub(crate) fn to_proto(self) -> v1::Gravity {
        match self {
            Gravity::Centre => v1::Gravity::Centre,
            Gravity::North => v1::Gravity::North,
            Gravity::South => v1::Gravity::South,
            Gravity::East => v1::Gravity::East,
            Gravity::West => v1::Gravity::West,
            Gravity::NorthEast => v1::Gravity::NorthEast,
            Gravity::NorthWest => v1::Gravity::NorthWest,
            Gravity::SouthEast => v1::Gravity::SouthEast,
            Gravity::SouthWest => v1::Gravity::SouthWest,
        }
    }

    /// The top-left corner of an `inner` rectangle placed in an `outer` one (`inner` no larger
    /// than `outer`), centring rounded down.
    pub fn place(self, outer: (u32, u32), inner: (u32, u32)) -> (u32, u32) {
        let (free_x, free_y) = (outer.0 - inner.0, outer.1 - inner.1);
        let x = match self {
            Gravity::West | Gravity::NorthWest | Gravity::SouthWest => 0,
            Gravity::East | Gravity::NorthEast | Gravity::SouthEast => free_x,
            Gravity::Centre | Gravity::North | Gravity::South => free_x / 2,
        };
        let y = match self {
            Gravity::North | Gravity::NorthEast | Gravity::NorthWest => 0,
            Gravity::South | Gravity::SouthEast | Gravity::SouthWest => free_y,
            Gravity::Centre | Gravity::East | Gravity::West => free_y / 2,
        };
        (x, y)
    }
}

/// Where a crop's window goes: a fixed place, or where the content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Fixed(Gravity),
    /// The most interesting window: edges, skin tones and saturation (see [`interest`]).
    Smart,
    /// The window with the most varied lightness.
    Entropy,
    /// Centred on the detected faces, weighted by their size; [`Anchor::Smart`] without one.
    Face,
}

impl Default for Anchor {
    fn default() -> Anchor {
        Anchor::Fixed(Gravity::Centre)
    }
}

impl Anchor {
    /// Every name a crop's gravity accepts.
    pub const NAMES: &[&str] = &[
        "centre",
        "north",
        "south",
        "east",
        "west",
        "north_east",
        "north_west",
        "south_east",
        "south_west",
        "smart",
        "entropy",
        "face",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Anchor::Fixed(gravity) => gravity.name(),
            Anchor::Smart => "smart",
            Anchor::Entropy => "entropy",
            Anchor::Face => "face",
        }
    }

    pub(crate) fn from_name(name: &str) -> Result<Anchor, String> {
        Ok(match name {
            "smart" => Anchor::Smart,
            "entropy" => Anchor::Entropy,
            "face" => Anchor::Face,
            other => Anchor::Fixed(Gravity::from_name(other).map_err(|_| {
                format!(
                    "gravity must be one of {}, got {}",
                    Anchor::NAMES.join(", "),
                    quoted(other)
                )
            })?),
        })
    }

    /// `None` for unspecified.
    pub(crate) fn from_proto(value: i32) -> Result<Option<Anchor>, String> {
        Ok(Some(match v1::Gravity::try_from(value) {
            Ok(v1::Gravity::Smart) => Anchor::Smart,
            Ok(v1::Gravity::Entropy) => Anchor::Entropy,
            Ok(v1::Gravity::Face) => Anchor::Face,
            _ => match Gravity::from_proto(value) {
                Ok(Some(gravity)) => Anchor::Fixed(gravity),
                Ok(None) => return Ok(None),
                Err(_) => {
                    return Err(format!(
                        "gravity must be one of {}, got {value}",
                        Anchor::NAMES.join(", ")
                    ));
                }
            },
        }))
    }

    pub(crate) fn to_proto(self) -> v1::Gravity {
        match self {
            Anchor::Fixed(gravity) => gravity.to_proto(),
            Anchor::Smart => v1::Gravity::Smart,
            Anchor::Entropy => v1::Gravity::Entropy,
            Anchor::Face => v1::Gravity::Face,
        }
    }

    /// Whether placing looks at the pixels (and so costs an analysis of the image).
    pub fn reads_content(self) -> bool {
        !matches!(self, Anchor::Fixed(_))
    }

    /// `cost` (of the op that places a window in `image`) with what placing adds: reading
    /// the image into a small copy and scoring it, or detecting faces (see `crate::budget`).
    pub(crate) fn add_cost(self, mut cost: Cost, image: Shape) -> Cost {
        let (cpu_ns, scratch) = match self {
            Anchor::Fixed(_) => return cost,
            Anchor::Smart | Anchor::Entropy => (ns(image.pixels(), interest::NS_PER_PIXEL), 0),
            // Smart when no face is found.
            Anchor::Face => (
                faces::cpu_ns(image) + ns(image.pixels(), interest::NS_PER_PIXEL),
                faces::scratch_bytes(image),
            ),
        };
        cost.cpu_ns += cpu_ns;
        cost.peak_bytes = cost.peak_bytes.saturating_add(scratch);
        cost
    }

    /// The top-left corner of a `window` (no larger than the image) placed in `image`.
    pub fn place(self, image: &Bitmap, window: (u32, u32)) -> Result<(u32, u32), String> {
        let outer = (image.width(), image.height());
        if window == outer {
            return Ok((0, 0));
        }
        match self {
            Anchor::Fixed(gravity) => Ok(gravity.place(outer, window)),
            Anchor::Smart => interest::focus(image, window, Strategy::Attention),
            Anchor::Entropy => interest::focus(image, window, Strategy::Entropy),
            Anchor::Face => match faces::centre(&faces::detect(image)?) {
                Some(centre) => Ok(around(centre, outer, window)),
                None => interest::focus(image, window, Strategy::Attention),
            },
        }
    }
}

/// The top-left corner of a `window` centred on `centre`, kept inside `outer`.
fn around(centre: (f64, f64), outer: (u32, u32), window: (u32, u32)) -> (u32, u32) {
    let axis = |centre: f64, outer: u32, window: u32| {
        (centre - f64::from(window) / 2.0)
            .round()
            .clamp(0.0, f64::from(outer - window)) as u32
    };
    (
        axis(centre.0, outer.0, window.0),
        axis(centre.1, outer.1, window.1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_protos_round_trip() {
        for g in Gravity::ALL {
            assert_eq!(Gravity::from_name(g.name()), Ok(g));
            assert_eq!(Gravity::from_proto(g.to_proto() as i32), Ok(Some(g)));
        }
        assert_eq!(Gravity::ALL.map(Gravity::name), Gravity::NAMES);
        assert_eq!(Gravity::from_name("center"), Ok(Gravity::Centre));
        assert_eq!(Gravity::from_proto(0), Ok(None));
        assert!(Gravity::from_name("up").is_err());
        assert!(Gravity::from_proto(99).is_err());
    }

    #[test]
    fn places_in_corners_edges_and_centre() {
        let outer = (100, 50);
        let inner = (10, 5);
        assert_eq!(Gravity::NorthWest.place(outer, inner), (0, 0));
        assert_eq!(Gravity::SouthEast.place(outer, inner), (90, 45));
        assert_eq!(Gravity::Centre.place(outer, inner), (45, 22));
        assert_eq!(Gravity::East.place(outer, inner), (90, 22));
        assert_eq!(Gravity::South.place(outer, inner), (45, 45));
    }
}
