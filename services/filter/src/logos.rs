//! Decoded watermark logos kept between tasks: a job stamping one logo on a thousand images
//! downloads and decodes it once per worker, not a thousand times.
//!
//! Keyed by blob id. Storage names blobs by a hash of their bytes, so an id always means the
//! same logo and an entry never goes stale.

use std::{collections::VecDeque, sync::Arc};

use crate::ops::Bitmap;

pub use pixelmesh_pipeline::budget::MAX_LOGO_PIXELS;
/// Decoded bytes the cache holds at most; the least recently used logos go first.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct LogoCache {
    /// Most recently used last.
    entries: VecDeque<(String, Arc<Bitmap>)>,
    bytes: usize,
}

impl LogoCache {
    pub fn get(&mut self, blob_id: &str) -> Option<Arc<Bitmap>> {
        let at = self.entries.iter().position(|(id, _)| id == blob_id)?;
        let entry = self.entries.remove(at)?;
        let logo = entry.1.clone();
        self.entries.push_back(entry);
        Some(logo)
    }

    /// Keeps `logo`, dropping the least recently used ones to stay within [`CACHE_BYTES`]; a
    /// logo bigger than that alone is not kept.
    pub fn insert(&mut self, blob_id: &str, logo: Arc<Bitmap>) {
        let size = logo.data().len();
        if size > CACHE_BYTES || self.entries.iter().any(|(id, _)| id == blob_id) {
            return;
        }
        while self.bytes + size > CACHE_BYTES {
            let Some((_, old)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.data().len();
        }
        self.bytes += size;
        self.entries.push_back((blob_id.to_string(), logo));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logo(bytes: usize) -> Arc<Bitmap> {
        let width = (bytes / 3) as u32;
        Arc::new(Bitmap::new(width, 1, false, vec![7; width as usize * 3]).unwrap())
    }

    #[test]
    fn keeps_recent_logos_within_the_byte_budget() {
        let mut cache = LogoCache::default();
        let third = CACHE_BYTES / 3;
        cache.insert("a", logo(third));
        cache.insert("b", logo(third));
        cache.insert("c", logo(third));
        // Touching `a` makes `b` the oldest, so `d` pushes out `b`.
        assert!(cache.get("a").is_some());
        cache.insert("d", logo(third));
        assert!(cache.get("b").is_none());
        for id in ["a", "c", "d"] {
            assert!(cache.get(id).is_some(), "{id}");
        }
        assert!(cache.bytes <= CACHE_BYTES);
        // Inserting an id again changes nothing.
        cache.insert("a", logo(3));
        assert_eq!(cache.get("a").unwrap().data().len(), third / 3 * 3);
    }

    #[test]
    fn a_logo_over_the_budget_is_not_kept() {
        let mut cache = LogoCache::default();
        cache.insert("small", logo(300));
        cache.insert("huge", logo(CACHE_BYTES + 3));
        assert!(cache.get("huge").is_none());
        assert!(cache.get("small").is_some());
    }
}
