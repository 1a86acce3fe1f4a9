//! The programs' global allocator: mimalloc, asked for alignment only when a layout needs more than
//! every mimalloc block already has.
//!
//! Written here rather than taken from the `mimalloc` crate because that crate's `MiMalloc` passes
//! every layout to `mi_malloc_aligned`, and mimalloc 3's aligned path serves only blocks of up to
//! 1 KiB from its fast path: every larger allocation (the boxed futures of a request's stack among
//! them, ~3.5 per `GET /health`) went through `mi_theap_malloc_zero_aligned_at_generic` and an
//! over-allocation, ~170 instructions more each (callgrind, BENCHMARKS.md, twentieth pass). The fix is
//! upstream's open pull request purpleprotocol/mimalloc_rust#170; this is the same rule as std's
//! `System` allocator, over `libmimalloc-sys`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block larger than a word is aligned to 16 bytes (`MI_MAX_ALIGN_SIZE`: block sizes
/// above one word are multiples of two words, and pages start aligned); a one-word block, to 8.
const MIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is already aligned to `align`. The `align <= size` half is
/// std's: a block of up to a word is only word-aligned.
fn plain_suffices(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// mimalloc as the global allocator (see the module's comment for how it differs from `MiMalloc`).
pub struct MiMalloc;

// SAFETY: each method returns a block of mimalloc's that is at least `layout.size()` bytes and aligned
// to `layout.align()` (`plain_suffices`, or the aligned call), or null; `dealloc` and `realloc` only
// see blocks from this allocator, which `mi_free` and the reallocations accept whichever call made them.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_suffices(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_suffices(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_suffices(layout.align(), new_size) {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust type can ask for up to 8 KiB (sizes around each mimalloc size
    /// class, alignments 1 to 4 KiB) comes back aligned, writable and, zeroed when asked, zero; a
    /// reallocation keeps the contents and the alignment.
    #[test]
    fn blocks_are_aligned_sized_and_kept() {
        let a = MiMalloc;
        for align in (0..=12).map(|s| 1usize << s) {
            for size in (1..=8192usize)
                .step_by(7)
                .chain([8, 16, 24, 1024, 1025, 4096])
            {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xAB, size);

                    let grown = size * 3 + 5;
                    let q = a.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "realloc size {grown} align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xAB));
                    a.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn plain_allocation_only_where_blocks_are_aligned_already() {
        assert!(plain_suffices(8, 8));
        assert!(plain_suffices(16, 16));
        assert!(plain_suffices(8, 2048));
        assert!(plain_suffices(16, 2048));
        // A word-sized block is only word-aligned.
        assert!(!plain_suffices(16, 8));
        assert!(!plain_suffices(32, 64));
        assert!(!plain_suffices(4096, 4096));
    }
}
