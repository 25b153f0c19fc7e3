//! An allocator for the ledger's big hash tables that asks for transparent huge
//! pages. A table of millions of ids is probed at random: with 4 KiB pages nearly
//! every probe also misses the TLB; with 2 MiB pages far fewer do. Small requests go
//! to the global allocator.

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// Requests at least this large are mapped directly and advised as huge pages.
const HUGE_THRESHOLD: usize = 4 << 20;
/// Huge page size on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Allocates large blocks with `mmap` + `madvise(MADV_HUGEPAGE)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePages;

fn mapped_size(layout: Layout) -> usize {
    layout.size().div_ceil(HUGE_PAGE) * HUGE_PAGE
}

// SAFETY: blocks come from mmap (page-aligned, which satisfies any table alignment)
// or from the global allocator, and each is returned to the one it came from, chosen
// by the same size test.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() < HUGE_THRESHOLD || layout.align() > 4096 {
            return Global.allocate(layout);
        }
        let size = mapped_size(layout);
        // SAFETY: an anonymous private mapping with no address hint.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(AllocError);
        }
        // SAFETY: advising our own fresh mapping; failure only loses the hint.
        unsafe { libc::madvise(ptr, size, libc::MADV_HUGEPAGE) };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, size))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() < HUGE_THRESHOLD || layout.align() > 4096 {
            return Global.allocate_zeroed(layout);
        }
        // Fresh anonymous mappings are zero-filled by the kernel, page by page, on
        // first touch: a huge table costs nothing until it is used.
        self.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() < HUGE_THRESHOLD || layout.align() > 4096 {
            // SAFETY: allocated by Global with this layout (same test as allocate).
            unsafe { Global.deallocate(ptr, layout) };
            return;
        }
        // SAFETY: mapped by allocate with this size.
        unsafe { libc::munmap(ptr.as_ptr().cast(), mapped_size(layout)) };
    }
}
