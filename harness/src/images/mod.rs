//! Component images from registries, for every backend that runs images:
//! lists of images by tag, locks of their digests, and the registry client
//! that resolves one to the other.

pub mod list;
pub mod registry;
