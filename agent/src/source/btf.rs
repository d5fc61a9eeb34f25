//! Member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`),
//! so the eBPF program reads `struct sock` with this kernel's layout rather
//! than the build machine's. A small parser: just enough of the BTF format to
//! walk struct and union members, through anonymous members, typedefs and
//! qualifiers, and to count a function's parameters. A missing member or one
//! of an unexpected size is a hard error.

use anyhow::{bail, Context, Result};
use hoist_common::ABSENT;

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Everything the eBPF program needs to know about the kernel's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub family: u32,
    /// `struct sock.sk_protocol`, read as [`Offsets::protocol_size`] bytes.
    pub protocol: u32,
    /// 2 for the u16 of Linux 5.6 and later, 1 for the older 8-bit field.
    pub protocol_size: u32,
    pub num: u32,
    pub rcv_saddr: u32,
    /// [`ABSENT`] on a kernel without IPv6.
    pub v6_rcv_saddr: u32,
    /// [`ABSENT`] on a kernel without IPv6.
    pub ipv6only_byte: u32,
    pub ipv6only_bit: u32,
    pub net: u32,
    pub net_inum: u32,
    pub inet_sport: u32,
    /// Parameter count of `inet_csk_listen_start` (where fexit finds the
    /// return value); 0 when the BTF has no such function.
    pub listen_start_nargs: u32,
    /// Byte of `struct sock` holding `sk_userlocks`.
    pub userlocks_byte: u32,
    /// Bit of that byte where `sk_userlocks` starts (0 for the u8 of Linux
    /// 6.2 and later, 4 for the 4-bit field before).
    pub userlocks_shift: u32,
    /// `struct socket.sk`.
    pub socket_sk: u32,
    /// Parameter counts of the functions the UDP trampoline hooks trace
    /// (fexit finds the return value after them), in the order of
    /// [`UDP_TRAMPOLINE_FUNCS`]; 0 for one the BTF does not have.
    pub udp_nargs: [u32; UDP_TRAMPOLINE_FUNCS.len()],
}

/// The functions the UDP trampoline hooks trace, and the parameter count
/// each hook is written for.
pub const UDP_TRAMPOLINE_FUNCS: [(&str, u32); 6] = [
    ("inet_bind", 3),
    ("inet6_bind", 3),
    ("__ip4_datagram_connect", 3),
    ("__ip6_datagram_connect", 3),
    ("udp_disconnect", 2),
    ("udp_lib_unhash", 1),
];

impl Offsets {
    pub fn from_running_kernel() -> Result<Offsets> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
        })?;
        Offsets::from_btf(&data).with_context(|| format!("finding struct offsets in {path}"))
    }

    pub fn from_btf(data: &[u8]) -> Result<Offsets> {
        let btf = Btf::parse(data)?;
        let sock = btf.find_struct("sock")?;
        let field = |path: &[&str], size: u32| -> Result<u32> {
            let m = btf.named(sock, path)?;
            if m.bitfield || m.size != size {
                bail!(
                    "struct sock.{} is {} bytes{}, expected {size}",
                    path.join("."),
                    m.size,
                    if m.bitfield { " (bitfield)" } else { "" }
                );
            }
            Ok(m.bit_offset / 8)
        };
        let family = field(&["__sk_common", "skc_family"], 2)?;
        let p = btf.named(sock, &["sk_protocol"])?;
        let (protocol, protocol_size) = match (p.bitfield, p.size, p.bits, p.bit_offset % 8) {
            (false, 2, _, _) => (p.bit_offset / 8, 2),
            (false, 1, _, _) => (p.bit_offset / 8, 1),
            (true, _, 8, 0) => (p.bit_offset / 8, 1),
            _ => bail!(
                "struct sock.sk_protocol is {} bits at bit {}: neither a u16 nor a byte-aligned 8-bit field",
                p.bits,
                p.bit_offset
            ),
        };
        let num = field(&["__sk_common", "skc_num"], 2)?;
        let rcv_saddr = field(&["__sk_common", "skc_rcv_saddr"], 4)?;
        let net = field(&["__sk_common", "skc_net", "net"], 8)?;
        let (v6_rcv_saddr, ipv6only_byte, ipv6only_bit) =
            match btf.named(sock, &["__sk_common", "skc_v6_rcv_saddr"]) {
                Ok(m) if m.size == 16 && !m.bitfield => {
                    let only = btf.named(sock, &["__sk_common", "skc_ipv6only"])?;
                    if !only.bitfield && only.size != 1 {
                        bail!("struct sock.skc_ipv6only is neither a bitfield nor a byte");
                    }
                    (m.bit_offset / 8, only.bit_offset / 8, only.bit_offset % 8)
                }
                Ok(m) => bail!("struct sock.skc_v6_rcv_saddr is {} bytes, expected 16", m.size),
                // A kernel without IPv6 has no such member: the v6 branch of the
                // eBPF program becomes dead code.
                Err(_) => (ABSENT, ABSENT, 0),
            };
        let netns = btf.find_struct("net")?;
        let inum = btf.named(netns, &["ns", "inum"])?;
        if inum.bitfield || inum.size != 4 {
            bail!("struct net.ns.inum is {} bytes, expected 4", inum.size);
        }
        // tcp_sock embeds inet_connection_sock, which embeds inet_sock; the
        // embedding members are found by their type so a renamed member does
        // not matter.
        let tcp = btf.find_struct("tcp_sock")?;
        let sport = btf.member(
            tcp,
            &[
                Step::OfType("inet_connection_sock"),
                Step::OfType("inet_sock"),
                Step::Name("inet_sport"),
            ],
        )?;
        if sport.bitfield || sport.size != 2 {
            bail!("struct tcp_sock inet_sport is {} bytes, expected 2", sport.size);
        }
        let listen_start_nargs = btf.func_params("inet_csk_listen_start")?.unwrap_or(0);
        // sk_userlocks: a u8 since Linux 6.2, a 4-bit field before; the
        // BINDPORT bit must sit in the byte read.
        let locks = btf.named(sock, &["sk_userlocks"])?;
        let (userlocks_byte, userlocks_shift) = (locks.bit_offset / 8, locks.bit_offset % 8);
        if locks.bits < 4 || userlocks_shift + locks.bits.min(8) > 8 {
            bail!(
                "struct sock.sk_userlocks is {} bits at bit {}: not within one byte",
                locks.bits,
                locks.bit_offset
            );
        }
        let socket = btf.find_struct("socket")?;
        let sk = btf.named(socket, &["sk"])?;
        if sk.bitfield || sk.size != 8 {
            bail!("struct socket.sk is {} bytes, expected a pointer", sk.size);
        }
        let mut udp_nargs = [0; UDP_TRAMPOLINE_FUNCS.len()];
        for (n, (func, _)) in udp_nargs.iter_mut().zip(UDP_TRAMPOLINE_FUNCS) {
            *n = btf.func_params(func)?.unwrap_or(0);
        }
        Ok(Offsets {
            family,
            protocol,
            protocol_size,
            num,
            rcv_saddr,
            v6_rcv_saddr,
            ipv6only_byte,
            ipv6only_bit,
            net,
            net_inum: inum.bit_offset / 8,
            inet_sport: sport.bit_offset / 8,
            listen_start_nargs,
            userlocks_byte,
            userlocks_shift,
            socket_sk: sk.bit_offset / 8,
            udp_nargs,
        })
    }
}

struct Type {
    name_off: u32,
    kind: u32,
    kflag: bool,
    /// Size for sized kinds, referenced type for the others.
    size_or_type: u32,
    /// (name_off, type, offset) of struct/union members; for an array,
    /// one entry (0, element type, element count).
    members: Vec<(u32, u32, u32)>,
    /// INT encoding (bits) for ints.
    int_bits: u32,
    /// Parameter count of a FUNC_PROTO.
    params: u32,
}

struct Btf<'a> {
    types: Vec<Type>,
    strings: &'a [u8],
}

/// A member found by path: where it starts and how big it is.
#[derive(Debug, PartialEq, Eq)]
struct Member {
    bit_offset: u32,
    size: u32,
    bitfield: bool,
    /// Bits the member takes: its bitfield width, or its size in bits.
    bits: u32,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u32(&mut self) -> Result<u32> {
        let b = self.data.get(self.pos..self.pos + 4).context("BTF type section truncated")?;
        self.pos += 4;
        Ok(u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn skip(&mut self, n: usize) -> Result<()> {
        if self.pos + n > self.data.len() {
            bail!("BTF type section truncated");
        }
        self.pos += n;
        Ok(())
    }
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>> {
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("BTF header truncated")?.try_into().unwrap(),
            ))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF data (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("BTF type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of bounds")?;
        // Type id 0 is void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kflag: false,
            size_or_type: 0,
            members: vec![],
            int_bits: 0,
            params: 0,
        }];
        let mut c = Cursor { data: types_data, pos: 0 };
        while c.pos < types_data.len() {
            let name_off = c.u32()?;
            let info = c.u32()?;
            let size_or_type = c.u32()?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut t = Type {
                name_off,
                kind,
                kflag: info >> 31 == 1,
                size_or_type,
                members: vec![],
                int_bits: 0,
                params: 0,
            };
            match kind {
                KIND_INT => t.int_bits = c.u32()? & 0xff,
                KIND_ARRAY => {
                    let elem = c.u32()?;
                    let _index = c.u32()?;
                    let n = c.u32()?;
                    t.members.push((0, elem, n));
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let (n, ty, off) = (c.u32()?, c.u32()?, c.u32()?);
                        t.members.push((n, ty, off));
                    }
                }
                KIND_ENUM => c.skip(8 * vlen)?,
                KIND_FUNC_PROTO => {
                    c.skip(8 * vlen)?;
                    t.params = vlen as u32;
                }
                KIND_VAR | KIND_DECL_TAG => c.skip(4)?,
                KIND_DATASEC | KIND_ENUM64 => c.skip(12 * vlen)?,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                k => bail!("unknown BTF kind {k} at type {}", types.len()),
            }
            types.push(t);
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types.get(id as usize).with_context(|| format!("BTF type id {id} out of range"))
    }

    fn find_struct(&self, name: &str) -> Result<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|i| i as u32)
            .with_context(|| format!("struct {name} not found in the kernel's BTF"))
    }

    /// Follows typedefs and qualifiers to the type that has a layout.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long at id {id}")
    }

    fn size(&self, id: u32) -> Result<u32> {
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        Ok(match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                t.size_or_type
            }
            KIND_PTR => 8,
            KIND_ARRAY => self.size(t.members[0].1)? * t.members[0].2,
            k => bail!("BTF type {id} of kind {k} has no size"),
        })
    }

    /// Parameter count of function `name`, `None` if the BTF has no such
    /// function.
    fn func_params(&self, name: &str) -> Result<Option<u32>> {
        let Some(func) = self
            .types
            .iter()
            .find(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name.as_bytes())
        else {
            return Ok(None);
        };
        let proto = self.ty(func.size_or_type)?;
        if proto.kind != KIND_FUNC_PROTO {
            bail!("BTF function {name} has no prototype");
        }
        Ok(Some(proto.params))
    }

    /// Finds the member `path` names, step by step, from struct/union `id`.
    fn named(&self, id: u32, path: &[&str]) -> Result<Member> {
        let steps: Vec<Step> = path.iter().map(|n| Step::Name(n)).collect();
        self.member(id, &steps)
    }

    /// Finds `path` from struct/union `id`, each step looked for through
    /// anonymous members too.
    fn member(&self, id: u32, path: &[Step]) -> Result<Member> {
        let mut base = 0;
        let mut cur = id;
        let mut found = None;
        for (i, step) in path.iter().enumerate() {
            let (bit_off, ty, bitfield_bits) = self.find_member(cur, step)?.with_context(|| {
                let shown: Vec<String> = path[..=i].iter().map(|s| s.to_string()).collect();
                format!(
                    "member {} of struct {} not found in the kernel's BTF",
                    shown.join("."),
                    self.type_name(id)
                )
            })?;
            base += bit_off;
            cur = self.resolve(ty)?;
            found = Some((ty, bitfield_bits));
        }
        let (ty, bitfield_bits) = found.context("empty member path")?;
        let size = self.size(ty)?;
        let int_bits = match self.ty(self.resolve(ty)?)? {
            t if t.kind == KIND_INT => t.int_bits,
            _ => size * 8,
        };
        let bitfield = bitfield_bits != 0 && bitfield_bits != size * 8 || int_bits != size * 8;
        let bits = match bitfield_bits {
            0 => int_bits,
            b => b,
        };
        Ok(Member { bit_offset: base, size, bitfield, bits })
    }

    fn type_name(&self, id: u32) -> String {
        self.ty(id)
            .map(|t| String::from_utf8_lossy(self.name(t.name_off)).into_owned())
            .unwrap_or_default()
    }

    /// Whether `ty` is (a typedef or qualified form of) the struct `name`.
    fn is_struct(&self, ty: u32, name: &str) -> Result<bool> {
        let t = self.ty(self.resolve(ty)?)?;
        Ok(t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
    }

    /// (bit offset, type, bitfield size) of the member of `id` that `step`
    /// names.
    fn find_member(&self, id: u32, step: &Step) -> Result<Option<(u32, u32, u32)>> {
        let t = self.ty(self.resolve(id)?)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            bail!("BTF type {id} is not a struct or union");
        }
        for &(name_off, ty, off) in &t.members {
            let (bit_off, bits) = if t.kflag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
            let hit = match step {
                Step::Name(name) => name_off != 0 && self.name(name_off) == name.as_bytes(),
                Step::OfType(name) => self.is_struct(ty, name)?,
            };
            if hit {
                return Ok(Some((bit_off, ty, bits)));
            }
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                let k = self.ty(inner)?.kind;
                if k == KIND_STRUCT || k == KIND_UNION {
                    if let Some((o, t2, b)) = self.find_member(inner, step)? {
                        return Ok(Some((bit_off + o, t2, b)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// One step of a member path: a member's name, or the struct type of an
/// embedded member whose name may differ between kernels.
enum Step<'s> {
    Name(&'s str),
    OfType(&'s str),
}

impl std::fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Name(n) => f.write_str(n),
            Step::OfType(t) => write!(f, "<struct {t}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand for the parser tests.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder { types: vec![], strings: vec![0], next_id: 1 }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn head(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            size_or_type: u32,
        ) -> u32 {
            let n = self.s(name);
            for w in [n, (kind << 24) | vlen | ((kflag as u32) << 31), size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }
        fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, to)
        }
        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, to)
        }
        fn func(&mut self, name: &str, ret: u32, params: &[u32]) -> u32 {
            let proto = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, ret);
            for &p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            // Linkage (global) sits where vlen would.
            self.head(name, KIND_FUNC, 1, false, proto)
        }
        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", KIND_ARRAY, 0, false, 0);
            for w in [elem, index, n] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            id
        }
        /// members: (name, type, bit offset, bitfield bits)
        fn compound(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let id = self.head(name, kind, members.len() as u32, kflag, size);
            for &(n, ty, off, bits) in members {
                let n = self.s(n);
                let off = if kflag { (bits << 24) | off } else { off };
                for w in [n, ty, off] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }
        fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature kernel: sock_common with anonymous unions and a bitfield,
    /// sock, net/ns_common, tcp_sock nesting down to inet_sock (through
    /// members named unlike Linux's, as another kernel might), and
    /// inet_csk_listen_start with `listen_start_params` parameters (`None`:
    /// no such function).
    fn mini_kernel(with_v6: bool, listen_start_params: Option<usize>) -> Vec<u8> {
        mini_kernel_with(with_v6, listen_start_params, false)
    }

    /// `old_protocol`: sk_protocol as the 8-bit field kernels before 5.6
    /// have, else the u16 of later ones.
    fn mini_kernel_with(
        with_v6: bool,
        listen_start_params: Option<usize>,
        old_protocol: bool,
    ) -> Vec<u8> {
        let mut b = Builder::new();
        let u8t = b.int("unsigned char", 1);
        let u16t = b.int("unsigned short", 2);
        let u32t = b.int("unsigned int", 4);
        let be32 = b.typedef("__be32", u32t);
        let be16 = b.typedef("__be16", u16t);
        let ns_common = b.compound(
            KIND_STRUCT,
            "ns_common",
            16,
            &[("stash", u32t, 0, 0), ("inum", u32t, 96, 0)],
        );
        let net =
            b.compound(KIND_STRUCT, "net", 256, &[("pad", u32t, 0, 0), ("ns", ns_common, 1024, 0)]);
        let net_ptr = b.ptr(net);
        let possible_net = b.compound(KIND_STRUCT, "", 8, &[("net", net_ptr, 0, 0)]);
        let possible_net_t = b.typedef("possible_net_t", possible_net);
        let addrpair = b.compound(
            KIND_STRUCT,
            "",
            8,
            &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
        );
        let addr_union =
            b.compound(KIND_UNION, "", 8, &[("skc_addrpair", u32t, 0, 0), ("", addrpair, 0, 0)]);
        let portpair =
            b.compound(KIND_STRUCT, "", 4, &[("skc_dport", be16, 0, 0), ("skc_num", u16t, 16, 0)]);
        let port_union =
            b.compound(KIND_UNION, "", 4, &[("skc_portpair", u32t, 0, 0), ("", portpair, 0, 0)]);
        let in6 = b.compound(KIND_STRUCT, "in6_addr", 16, &[("s6_addr32", u32t, 0, 0)]);
        let mut m = vec![
            ("", addr_union, 0, 0),
            ("", port_union, 96, 0),
            ("skc_family", u16t, 128, 0),
            ("skc_reuse", u8t, 152, 4),
            ("skc_reuseport", u8t, 156, 1),
            ("skc_ipv6only", u8t, 157, 1),
            ("skc_net", possible_net_t, 384, 0),
        ];
        if with_v6 {
            m.push(("skc_v6_rcv_saddr", in6, 576, 0));
        }
        let sock_common = b.compound(KIND_STRUCT, "sock_common", 136, &m);
        let (protocol, userlocks) = match old_protocol {
            // unsigned int sk_padding:1, ..., sk_userlocks:4, sk_protocol:8,
            // sk_type:16; later u8 sk_gso_disabled:1, ..., sk_userlocks:4.
            true => (("sk_protocol", u32t, 4096 + 8, 8), ("sk_userlocks", u8t, 5000 + 4, 4)),
            false => (("sk_protocol", u16t, 4160, 0), ("sk_userlocks", u8t, 1944, 0)),
        };
        let sock = b.compound(
            KIND_STRUCT,
            "sock",
            760,
            &[("__sk_common", sock_common, 0, 0), protocol, userlocks],
        );
        let sock_ptr_t = b.ptr(sock);
        b.compound(
            KIND_STRUCT,
            "socket",
            128,
            &[("state", u32t, 0, 0), ("type", u16t, 32, 0), ("sk", sock_ptr_t, 192, 0)],
        );
        let inet_sock = b.compound(
            KIND_STRUCT,
            "inet_sock",
            900,
            &[("sk", sock_common, 0, 0), ("inet_sport", be16, 6512, 0)],
        );
        let icsk = b.compound(
            KIND_STRUCT,
            "inet_connection_sock",
            1200,
            &[("icsk_pad", u32t, 0, 0), ("some_other_name", inet_sock, 64, 0)],
        );
        let idx = b.int("int", 4);
        let _arr = b.array(u8t, idx, 4);
        let wrapped =
            b.compound(KIND_STRUCT, "", 1208, &[("pad", u32t, 0, 0), ("conn", icsk, 64, 0)]);
        b.compound(KIND_STRUCT, "tcp_sock", 2000, &[("", wrapped, 0, 0)]);
        if let Some(n) = listen_start_params {
            let sock_ptr = b.ptr(0);
            let params: Vec<u32> =
                std::iter::once(sock_ptr).chain(std::iter::repeat_n(idx, n - 1)).collect();
            b.func("inet_csk_listen_start", idx, &params);
        }
        for (name, n) in UDP_TRAMPOLINE_FUNCS {
            b.func(name, idx, &vec![sock_ptr_t; n as usize]);
        }
        b.finish()
    }

    #[test]
    fn offsets_come_from_the_btf_given() {
        let linux = Offsets {
            family: 16,
            protocol: 520,
            protocol_size: 2,
            num: 14,
            rcv_saddr: 4,
            v6_rcv_saddr: 72,
            ipv6only_byte: 19,
            ipv6only_bit: 5,
            net: 48,
            net_inum: 140,
            // 8 (wrapper) + 8 (inet_sock in inet_connection_sock) + 814.
            inet_sport: 830,
            listen_start_nargs: 1,
            userlocks_byte: 243,
            userlocks_shift: 0,
            socket_sk: 24,
            udp_nargs: [3, 3, 3, 3, 2, 1],
        };
        let cases = [
            ("with IPv6", mini_kernel(true, Some(1)), linux),
            (
                "without IPv6",
                mini_kernel(false, Some(1)),
                Offsets { v6_rcv_saddr: ABSENT, ipv6only_byte: ABSENT, ipv6only_bit: 0, ..linux },
            ),
            (
                "before 5.19: listen_start(sk, backlog)",
                mini_kernel(true, Some(2)),
                Offsets { listen_start_nargs: 2, ..linux },
            ),
            (
                "no inet_csk_listen_start",
                mini_kernel(true, None),
                Offsets { listen_start_nargs: 0, ..linux },
            ),
            (
                "before 5.6: sk_protocol:8 (and sk_userlocks:4, as before 6.2)",
                mini_kernel_with(true, Some(1), true),
                Offsets {
                    protocol: 513,
                    protocol_size: 1,
                    userlocks_byte: 625,
                    userlocks_shift: 4,
                    ..linux
                },
            ),
            (
                "no udp_disconnect",
                renamed(&mini_kernel(true, Some(1)), "udp_disconnect", "udp_disconnecX"),
                Offsets { udp_nargs: [3, 3, 3, 3, 0, 1], ..linux },
            ),
        ];
        for (name, blob, want) in cases {
            assert_eq!(Offsets::from_btf(&blob).unwrap(), want, "{name}");
        }
    }

    /// `blob` with one name in its string section changed (same length).
    fn renamed(blob: &[u8], from: &str, to: &str) -> Vec<u8> {
        let (from, to) = (format!("\0{from}\0").into_bytes(), format!("\0{to}\0").into_bytes());
        let at = blob.windows(from.len()).position(|w| w == from).expect("name in the blob");
        let mut out = blob.to_vec();
        out[at..at + to.len()].copy_from_slice(&to);
        out
    }

    #[test]
    fn broken_btf_is_an_error() {
        let good = mini_kernel(true, Some(1));
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        let truncated = good[..good.len() / 2].to_vec();
        let mut no_sock = Builder::new();
        no_sock.int("int", 4);
        let mut wrong_size = Builder::new();
        let u32t = wrong_size.int("unsigned int", 4);
        wrong_size.compound(KIND_STRUCT, "sock_common", 8, &[("skc_family", u32t, 0, 0)]);
        wrong_size.compound(KIND_STRUCT, "sock", 8, &[("__sk_common", 2, 0, 0)]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("magic", bad_magic, "bad magic"),
            ("truncated", truncated, "out of bounds"),
            ("no struct sock", no_sock.finish(), "struct sock not found"),
            ("wrong member size", wrong_size.finish(), "is 4 bytes"),
            ("no skc_num", renamed(&good, "skc_num", "skc_nuX"), "member __sk_common.skc_num of struct sock not found"),
            ("no ns.inum", renamed(&good, "inum", "inuX"), "member ns.inum of struct net not found"),
            (
                "no inet_sock in tcp_sock",
                renamed(&good, "inet_sock", "inet_soXk"),
                "member <struct inet_connection_sock>.<struct inet_sock> of struct tcp_sock not found",
            ),
            ("no inet_sport", renamed(&good, "inet_sport", "inet_spoXt"), "<struct inet_sock>.inet_sport of struct tcp_sock"),
            ("no sk_protocol", renamed(&good, "sk_protocol", "sk_protocoX"), "member sk_protocol of struct sock not found"),
            ("no sk_userlocks", renamed(&good, "sk_userlocks", "sk_userlockX"), "member sk_userlocks of struct sock not found"),
            ("no socket.sk", renamed(&good, "socket", "sockeX"), "struct socket not found"),
        ];
        for (name, blob, want) in cases {
            let err = Offsets::from_btf(&blob).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{name}: {err:#}");
        }
    }
}
