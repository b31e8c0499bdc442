//! The one `bpf(2)` question tsbridge asks: how many programs are attached to an
//! interface through a BPF link hook (tcx, netkit), which netlink does not show.

use std::io;

/// `BPF_PROG_QUERY` (linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_QUERY: nix::libc::c_long = 16;

/// The `query` member of `union bpf_attr` (Linux 6.6 layout; the kernel accepts a shorter
/// or zero-padded attr as long as the bytes it does not know are zero).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How many programs are attached to interface `ifindex` at `attach_type` (`BPF_TCX_*`,
/// `BPF_NETKIT_*`). Needs CAP_NET_ADMIN; `EINVAL` on a kernel without that hook.
pub fn attached_count(ifindex: u32, attach_type: u32) -> io::Result<u32> {
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        ..QueryAttr::default()
    };
    // SAFETY: `attr` is a valid, writable `bpf_attr` prefix of the size passed; with
    // `prog_ids` null the kernel only writes the count (and flags, revision) into it.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            std::mem::size_of::<QueryAttr>() as nix::libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.prog_cnt)
}
