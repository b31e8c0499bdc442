//! The one write to memory Rust does not own: zeroing bytes of the process's initial
//! environment block (the strings the kernel copied onto the stack at exec, which
//! `/proc/<pid>/environ` shows). Everything that makes it sound is checked by the caller,
//! [`super::scrub`]; this module only holds the `unsafe` itself.

/// Overwrites `len` bytes at address `addr` with zeros.
///
/// # Safety
///
/// `[addr, addr + len)` must lie in memory of this process that is mapped writable, that no
/// Rust reference points to, and that no other thread reads or writes during the call.
pub(super) unsafe fn zero(addr: usize, len: usize) {
    let p = std::ptr::with_exposed_provenance_mut::<u8>(addr);
    // SAFETY: the caller's contract above. Volatile, so the stores are never treated as
    // dead: nothing in this program reads them back, the kernel does (for /proc).
    for i in 0..len {
        unsafe { p.add(i).write_volatile(0) };
    }
}
