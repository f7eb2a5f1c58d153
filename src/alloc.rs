//! The global allocator: mimalloc, asked for memory the way its fast path
//! expects.
//!
//! Why not `mimalloc::MiMalloc` as it comes: it passes every request to
//! `mi_malloc_aligned`, alignment 8 included. mimalloc v3 answers that from
//! its plain path only when the block is small and happens to be aligned,
//! or when the block size is a power of two; every other request (a
//! request body, a header map's buckets, a boxed future) is over-allocated
//! by `align - 1` bytes through a slower path that also marks the page as
//! holding interior pointers, which slows every later free on it. Rust
//! tells the allocator the alignment it needs, and every mimalloc block of
//! 16 bytes or more is 16-aligned (a page's first block is, and the size
//! classes are multiples of 16), so an alignment of at most 16 that does
//! not exceed the size is what plain `mi_malloc` already guarantees; only
//! larger alignments go to the aligned functions. The same rule as the
//! standard library's `System` allocator with `malloc`; upstream has the
//! change as an open pull request (purpleprotocol/mimalloc_rust#170).
//!
//! Unsafe code lives only here: `GlobalAlloc` is an unsafe trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this size already has
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the process's allocator (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc and is freed or
// resized by mimalloc; the alignment contract is the module docs' rule.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI allocation calls; a null return is passed on.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps the alignment by the same rule as `alloc`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size a request path meets and then some, at every alignment
    /// Rust types use: each block is aligned as asked, holds its bytes,
    /// and survives growing and shrinking.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = MiMalloc;
        let mut sizes: Vec<usize> = (1..=2_100).collect();
        sizes.extend([
            4_095,
            4_096,
            8_191,
            8_192,
            65_535,
            65_536,
            1 << 20,
            (1 << 22) + 3,
        ]);
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                    let grown = size * 3 + 7;
                    let q = a.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "grown {size}->{grown} align {align}");
                    assert!(
                        std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|&b| b == 0xA5)
                    );
                    let big = Layout::from_size_align(grown, align).unwrap();
                    let r = a.realloc(q, big, size.div_ceil(2));
                    assert_eq!(r as usize % align, 0, "shrunk align {align}");
                    assert!(
                        std::slice::from_raw_parts(r, size.div_ceil(2))
                            .iter()
                            .all(|&b| b == 0xA5)
                    );
                    a.dealloc(r, Layout::from_size_align(size.div_ceil(2), align).unwrap());
                }
            }
        }
    }

    #[test]
    fn only_alignments_mimalloc_gives_anyway_take_the_plain_path() {
        assert!(plain(8, 8) && plain(16, 48) && plain(8, 1_364) && plain(1, 1));
        assert!(!plain(16, 8), "an 8-byte block is only 8-aligned");
        assert!(!plain(32, 64) && !plain(128, 1_024));
    }
}
