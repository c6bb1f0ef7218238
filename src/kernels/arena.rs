//! One allocation for all the weights a forward streams, which Linux may back with 2 MiB pages
//! (transparent huge pages, asked for with `madvise`). With 4 KiB pages the hardware prefetcher
//! stops at every page boundary; a one-token forward, which does little but stream the
//! weights, measured about 12% slower that way (glibc's huge-page tunable against none, four
//! interleaved runs).

use std::alloc::Layout;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

/// Huge page size; also the arena's alignment, so that its pages can be huge ones.
const HUGE_PAGE: usize = 2 << 20;

/// Each array starts on a cache line.
const ALIGN: usize = 64;

struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the memory is written once, while packing, before any `Packed` can read it; after
// that it is only read.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    fn new(bytes: usize) -> Self {
        let size = bytes.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let layout = Layout::from_size_align(size, HUGE_PAGE).expect("arena layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the range is this allocation, aligned to a page. A refusal (THP off) only
        // means small pages.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE);
        }
        Self { ptr, layout }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A slice of plain values (codes, f16 scales) living in an [`Arena`].
pub struct Packed<T> {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> Clone for Packed<T> {
    fn clone(&self) -> Self {
        Self {
            arena: self.arena.clone(),
            offset: self.offset,
            len: self.len,
            _values: PhantomData,
        }
    }
}

impl<T: Copy> Deref for Packed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `pack` copied `len` values of T to this offset, aligned for T, inside the
        // arena this holds alive.
        unsafe {
            std::slice::from_raw_parts(self.arena.ptr.as_ptr().add(self.offset).cast(), self.len)
        }
    }
}

/// How much of an arena the kernel backs with huge pages, as `fixpoint bench` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HugePages {
    /// Bytes in 2 MiB pages.
    pub huge: usize,
    /// The arena's bytes.
    pub total: usize,
}

impl Arena {
    /// What `/proc/self/smaps` says of the mapping that holds the arena; `None` where there is
    /// no such file (not Linux).
    fn huge_pages(&self) -> Option<HugePages> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let huge = anon_huge_bytes(&smaps, self.ptr.as_ptr() as usize)?;
        let total = self.layout.size();
        Some(HugePages {
            huge: huge.min(total),
            total,
        })
    }
}

/// The `AnonHugePages` of the mapping in `smaps` (the text of `/proc/<pid>/smaps`) that holds
/// address `at`, in bytes.
fn anon_huge_bytes(smaps: &str, at: usize) -> Option<usize> {
    let mut inside = false;
    for line in smaps.lines() {
        // A mapping starts with its range, "start-end perms ...", in hex.
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((a, b)) = range {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = (a..b).contains(&at);
                continue;
            }
        }
        if inside {
            if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .map(|k| k << 10);
            }
        }
    }
    None
}

/// A weight array: a vector while a model is being built, then packed.
#[derive(Clone)]
pub enum Store<T> {
    Owned(Vec<T>),
    Packed(Packed<T>),
}

impl<T: Copy> Deref for Store<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Store::Owned(v) => v,
            Store::Packed(p) => p,
        }
    }
}

impl<T> From<Vec<T>> for Store<T> {
    fn from(v: Vec<T>) -> Self {
        Store::Owned(v)
    }
}

impl<T: Copy> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} values]", self.len())
    }
}

impl<T: Copy> Store<T> {
    /// For a packed array, how much of its arena is in huge pages.
    pub fn huge_pages(&self) -> Option<HugePages> {
        match self {
            Store::Owned(_) => None,
            Store::Packed(p) => p.arena.huge_pages(),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: T is a plain value type (u8, i8, f16): any value is valid as bytes.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast(), std::mem::size_of_val(&**self)) }
    }

    fn packed(&self, arena: &Arc<Arena>, offset: usize) -> Self {
        Store::Packed(Packed {
            arena: arena.clone(),
            offset,
            len: self.len(),
            _values: PhantomData,
        })
    }
}

/// A weight array of any of the value types the kernels read.
pub enum StoreMut<'a> {
    U8(&'a mut Store<u8>),
    I8(&'a mut Store<i8>),
    F16(&'a mut Store<half::f16>),
}

impl StoreMut<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            StoreMut::U8(s) => s.bytes(),
            StoreMut::I8(s) => s.bytes(),
            StoreMut::F16(s) => s.bytes(),
        }
    }

    fn repoint(&mut self, arena: &Arc<Arena>, offset: usize) {
        match self {
            StoreMut::U8(s) => **s = s.packed(arena, offset),
            StoreMut::I8(s) => **s = s.packed(arena, offset),
            StoreMut::F16(s) => **s = s.packed(arena, offset),
        }
    }
}

/// Moves every given array into one new arena, in the given order (the order a forward reads
/// them, so that the stream runs forward through memory).
pub fn pack(mut stores: Vec<StoreMut<'_>>) {
    let mut offsets = Vec::with_capacity(stores.len());
    let mut bytes = 0usize;
    for s in &stores {
        bytes = bytes.div_ceil(ALIGN) * ALIGN;
        offsets.push(bytes);
        bytes += s.bytes().len();
    }
    let arena = Arc::new(Arena::new(bytes));
    for (s, &offset) in stores.iter_mut().zip(&offsets) {
        let src = s.bytes();
        // SAFETY: offset + len <= bytes <= the arena's size, and no `Packed` reads the arena
        // before this loop ends. Offsets are multiples of 64, so aligned for every T.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), arena.ptr.as_ptr().add(offset), src.len())
        };
        s.repoint(&arena, offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_read_from_the_mapping_holding_the_address() {
        let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      2048 kB
7f0000400000-7f0006400000 rw-p 00000000 00:00 0
Size:              98304 kB
Rss:               98304 kB
AnonHugePages:     96256 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
AnonHugePages:         0 kB
";
        assert_eq!(anon_huge_bytes(smaps, 0x7f0000500000), Some(96256 << 10));
        assert_eq!(anon_huge_bytes(smaps, 0x7f0000000040), Some(2048 << 10));
        assert_eq!(anon_huge_bytes(smaps, 0x1000), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_packed_arena_reports_its_pages() {
        let mut a: Store<u8> = vec![7u8; 3 << 20].into();
        assert_eq!(a.huge_pages(), None);
        pack(vec![StoreMut::U8(&mut a)]);
        let pages = a.huge_pages().expect("a packed arena on Linux");
        assert_eq!(pages.total, 4 << 20);
        assert!(pages.huge <= pages.total);
    }

    #[test]
    fn packed_arrays_read_back_what_was_packed() {
        let mut a: Store<u8> = vec![1u8, 2, 3].into();
        let mut b: Store<half::f16> = vec![half::f16::from_f32(0.5); 100].into();
        let mut c: Store<i8> = Vec::new().into();
        pack(vec![
            StoreMut::U8(&mut a),
            StoreMut::F16(&mut b),
            StoreMut::I8(&mut c),
        ]);
        assert!(matches!(a, Store::Packed(_)));
        assert_eq!(&*a, &[1, 2, 3]);
        assert_eq!(b.len(), 100);
        assert!(b.iter().all(|v| v.to_f32() == 0.5));
        assert!(c.is_empty());
        let copy = b.clone();
        drop(b);
        assert_eq!(copy[99].to_f32(), 0.5);
    }
}
