//! Windows system calls (windows-sys), as safe wrappers. The only `unsafe` in
//! this crate, each block with its reason.
#![allow(unsafe_code)]

/// Windows has no per-process socket limit to raise (sockets are handles,
/// bounded by memory only).
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}

/// No descriptor limit to fit connections into (see `raise_fd_limit`).
pub fn open_file_limit() -> Option<u64> {
    None
}

use crate::transport::Guid;
use socket2::{SockAddr, SockAddrStorage, Socket};
use std::io;
use std::os::windows::io::AsRawSocket;
use std::time::Duration;
use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS,
};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, AF_HYPERV, SOCKET_ERROR, SOL_SOCKET, SO_EXCLUSIVEADDRUSE,
};
use windows_sys::Win32::System::Console::{FreeConsole, GetConsoleProcessList};
use windows_sys::Win32::System::Hypervisor::{
    HVSOCKET_CONNECT_TIMEOUT, HVSOCKET_CONNECT_TIMEOUT_MAX, HV_PROTOCOL_RAW, SOCKADDR_HV,
};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegDeleteValueW, RegEnumKeyExW, RegGetValueW, RegOpenKeyExW,
    RegSetValueExW, HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, KEY_READ, KEY_SET_VALUE,
    REG_OPTION_NON_VOLATILE, REG_SZ, RRF_RT_REG_SZ,
};

/// setsockopt(2) with a plain value.
fn set_opt<T: Copy>(s: &Socket, level: i32, name: i32, value: T) -> io::Result<()> {
    // SAFETY: `value` lives on this frame for the whole call and its size is
    // passed with its address; the socket is open for as long as `s` is
    // borrowed.
    let r = unsafe {
        setsockopt(
            s.as_raw_socket() as usize,
            level,
            name,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_EXCLUSIVEADDRUSE: no other socket, of any process or user, may bind
/// the same port while this one holds it (SO_REUSEADDR elsewhere included).
pub fn set_exclusive_addr_use(s: &Socket) -> io::Result<()> {
    set_opt(s, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, 1i32)
}

/// HVSOCKET_CONNECT_TIMEOUT: how long a Hyper-V connect may take before it
/// fails with WSAETIMEDOUT.
pub fn set_hv_connect_timeout(s: &Socket, t: Duration) -> io::Result<()> {
    let ms = t.as_millis().min(u128::from(HVSOCKET_CONNECT_TIMEOUT_MAX)) as u32;
    set_opt(s, HV_PROTOCOL_RAW as i32, HVSOCKET_CONNECT_TIMEOUT as i32, ms)
}

/// A `SOCKADDR_HV` for (VM, service), built from Microsoft's own definition.
pub fn hv_sockaddr(vm: Guid, service: Guid) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: SOCKADDR_HV is a sockaddr type of this platform and fits in
    // the storage (36 of 128 bytes); view_as asserts the size too.
    let hv = unsafe { storage.view_as::<SOCKADDR_HV>() };
    *hv = SOCKADDR_HV {
        Family: AF_HYPERV,
        Reserved: 0,
        VmId: GUID::from_u128(vm.0),
        ServiceId: GUID::from_u128(service.0),
    };
    let len = std::mem::size_of::<SOCKADDR_HV>() as i32;
    // SAFETY: the first `len` bytes hold the SOCKADDR_HV written above, and
    // its family field says AF_HYPERV.
    unsafe { SockAddr::new(storage, len) }
}

/// A registry root key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryRoot {
    /// HKEY_LOCAL_MACHINE
    LocalMachine,
    /// HKEY_CURRENT_USER
    CurrentUser,
}

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful RegOpenKeyExW and is
        // closed only here, once.
        unsafe { RegCloseKey(self.0) };
    }
}

impl RegistryRoot {
    fn hkey(self) -> HKEY {
        match self {
            RegistryRoot::LocalMachine => HKEY_LOCAL_MACHINE,
            RegistryRoot::CurrentUser => HKEY_CURRENT_USER,
        }
    }
}

/// A NUL-terminated UTF-16 string for the W functions.
fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A Win32 error code as an `io::Error` (ERROR_FILE_NOT_FOUND is `NotFound`).
fn win32(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

/// Sets the string (REG_SZ) value `name` of `root\path`, creating the key
/// if needed.
pub fn registry_set_string(
    root: RegistryRoot,
    path: &str,
    name: &str,
    value: &str,
) -> io::Result<()> {
    let (path, name, value) = (wide(path), wide(name), wide(value));
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and outlives the call; the class and
    // security attributes are optional (null); `key` is a valid place for
    // the handle and the disposition is not asked for.
    let r = unsafe {
        RegCreateKeyExW(
            root.hkey(),
            path.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    if r != ERROR_SUCCESS {
        return Err(win32(r));
    }
    let key = Key(key);
    let bytes = (value.len() * 2) as u32;
    // SAFETY: `name` is NUL-terminated; the data pointer covers `bytes`
    // bytes of `value`, its terminating NUL included, as REG_SZ wants.
    let r =
        unsafe { RegSetValueExW(key.0, name.as_ptr(), 0, REG_SZ, value.as_ptr().cast(), bytes) };
    if r != ERROR_SUCCESS {
        return Err(win32(r));
    }
    Ok(())
}

/// The string value `name` of `root\path`; `None` when the key or the
/// value does not exist.
pub fn registry_get_string(
    root: RegistryRoot,
    path: &str,
    name: &str,
) -> io::Result<Option<String>> {
    let (path, name) = (wide(path), wide(name));
    let mut buf: Vec<u16> = vec![0; 256];
    loop {
        let mut bytes = (buf.len() * 2) as u32;
        // SAFETY: `path` and `name` are NUL-terminated; `buf` has room for
        // `bytes` bytes, and the call writes at most that many (it reports
        // the size it needs with ERROR_MORE_DATA instead).
        let r = unsafe {
            RegGetValueW(
                root.hkey(),
                path.as_ptr(),
                name.as_ptr(),
                RRF_RT_REG_SZ,
                std::ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        match r {
            ERROR_SUCCESS => {
                let units = (bytes as usize / 2).min(buf.len());
                let s = &buf[..units];
                let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
                return Ok(Some(String::from_utf16_lossy(&s[..end])));
            }
            ERROR_MORE_DATA => buf.resize(bytes as usize / 2 + 1, 0),
            ERROR_FILE_NOT_FOUND => return Ok(None),
            e => return Err(win32(e)),
        }
    }
}

/// Deletes the value `name` of `root\path`; `false` when there was none.
pub fn registry_delete_value(root: RegistryRoot, path: &str, name: &str) -> io::Result<bool> {
    let (path, name) = (wide(path), wide(name));
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and outlives the call; `key` is a
    // valid place for the opened handle.
    let r = unsafe { RegOpenKeyExW(root.hkey(), path.as_ptr(), 0, KEY_SET_VALUE, &mut key) };
    match r {
        ERROR_SUCCESS => {}
        ERROR_FILE_NOT_FOUND => return Ok(false),
        e => return Err(win32(e)),
    }
    let key = Key(key);
    // SAFETY: an open key and a NUL-terminated name that outlives the call.
    match unsafe { RegDeleteValueW(key.0, name.as_ptr()) } {
        ERROR_SUCCESS => Ok(true),
        ERROR_FILE_NOT_FOUND => Ok(false),
        e => Err(win32(e)),
    }
}

/// Lets go of the console window when this process is its only user (it
/// was started without one, e.g. at logon, and Windows opened a window for
/// it); a console shared with a shell stays. Whether it let go.
pub fn release_own_console() -> bool {
    let mut pids = [0u32; 2];
    // SAFETY: `pids` has room for the 2 ids passed as its length.
    let n = unsafe { GetConsoleProcessList(pids.as_mut_ptr(), pids.len() as u32) };
    // SAFETY: FreeConsole takes no arguments; it only detaches this process.
    n == 1 && unsafe { FreeConsole() } != 0
}

/// The names of the subkeys of `root\path` (read access only). A missing
/// key is an error of kind `NotFound`.
pub fn registry_subkeys(root: RegistryRoot, path: &str) -> io::Result<Vec<String>> {
    let root = root.hkey();
    let wide: Vec<u16> = wide(path);
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated and outlives the call; `key` is a
    // valid place for the opened handle.
    let r = unsafe { RegOpenKeyExW(root, wide.as_ptr(), 0, KEY_READ, &mut key) };
    if r != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(r as i32));
    }
    let key = Key(key);
    let mut names = Vec::new();
    for index in 0.. {
        // Key names are at most 255 characters.
        let mut name = [0u16; 256];
        let mut len = name.len() as u32;
        // SAFETY: `name` has room for `len` UTF-16 units and the call writes
        // at most that many; the optional class and time outputs are null.
        let r = unsafe {
            RegEnumKeyExW(
                key.0,
                index,
                name.as_mut_ptr(),
                &mut len,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        match r {
            ERROR_SUCCESS => names.push(String::from_utf16_lossy(&name[..len as usize])),
            ERROR_NO_MORE_ITEMS => break,
            e => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::hvsock::{sockaddr_hv_bytes, SOCKADDR_HV_LEN};

    /// A string value written, read back (also by reg.exe, so the bytes are
    /// what Windows reads), longer than the first read buffer, deleted; a
    /// missing key or value reads as none and deletes as nothing.
    #[test]
    fn registry_string_values_round_trip() {
        use std::process::Command;
        let base = format!(r"Software\hoist-test-values-{}", std::process::id());
        let path = format!(r"{base}\Run");
        let root = RegistryRoot::CurrentUser;
        assert_eq!(registry_get_string(root, &path, "v").unwrap(), None);
        assert!(!registry_delete_value(root, &path, "v").unwrap());
        let value = r#""C:\Program Files\hoist\hoist-host.exe" run --guest hvsock:wsl:1023"#;
        registry_set_string(root, &path, "v", value).unwrap();
        assert_eq!(registry_get_string(root, &path, "v").unwrap().as_deref(), Some(value));
        let out = Command::new("reg")
            .args(["query", &format!(r"HKCU\{path}"), "/v", "v"])
            .output()
            .expect("running reg.exe");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("REG_SZ") && text.contains(value), "{text}");
        let long = "x".repeat(1000);
        registry_set_string(root, &path, "long", &long).unwrap();
        assert_eq!(registry_get_string(root, &path, "long").unwrap(), Some(long));
        assert!(registry_delete_value(root, &path, "v").unwrap());
        assert_eq!(registry_get_string(root, &path, "v").unwrap(), None);
        assert!(!registry_delete_value(root, &path, "v").unwrap());
        let _ = Command::new("reg").args(["delete", &format!(r"HKCU\{base}"), "/f"]).output();
    }

    /// windows-sys's SOCKADDR_HV and the pure byte layout agree.
    #[test]
    fn sockaddr_hv_matches_the_portable_layout() {
        let vm: Guid = "01020304-0506-0708-090A-0B0C0D0E0F10".parse().unwrap();
        let svc = Guid::for_vsock_port(1024);
        let a = hv_sockaddr(vm, svc);
        assert_eq!(a.len() as usize, SOCKADDR_HV_LEN);
        assert_eq!(a.family(), AF_HYPERV);
        // SAFETY: `as_ptr` points at the address's storage, of which the
        // first `len` bytes are initialised; `a` outlives the slice.
        let bytes =
            unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.len() as usize) };
        assert_eq!(bytes, sockaddr_hv_bytes(vm, svc));
    }
}
