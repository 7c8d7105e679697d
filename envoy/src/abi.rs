//! The proxy-wasm ABI 0.2.1, this filter's own binding: the host functions it calls and the
//! entry points Envoy calls. The only module of the crate with `unsafe`.
//!
//! Why not the SDK's: `proxy-wasm` 0.2.5 panics on any status a call's wrapper does not expect
//! (52 `panic!`s), its dispatcher panics on a context or call token it does not know, and it
//! declares the host's status as a Rust enum, so a status it lacks (Envoy has 13, it names 8) is
//! undefined behaviour before any panic. A panic traps the VM, and Envoy then fails every request
//! of that worker thread. Here every status arrives as a plain `u32` and becomes an error value;
//! every entry point that does not know its context does the safe thing (a 500, or nothing).
//!
//! Memory the host returns was allocated by [`proxy_on_memory_allocate`], as a `Vec<u8>` of
//! exactly the size asked for, so it is taken back as one.

#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

use crate::{filter, wire};

/// A status the host answered other than `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status(u32);

impl Status {
    const OK: u32 = 0;
    const NOT_FOUND: u32 = 1;
    const EMPTY: u32 = 7;

    fn check(status: u32) -> Result<(), Self> {
        if status == Self::OK {
            Ok(())
        } else {
            Err(Self(status))
        }
    }

    /// The ABI's name for the status, for logs.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            5 => "BadExpression",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            9 => "ResultMismatch",
            10 => "InternalFailure",
            11 => "BrokenConnection",
            12 => "Unimplemented",
            _ => "Unknown",
        }
    }
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum MapType {
    HttpRequestHeaders = 0,
    HttpCallResponseHeaders = 6,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum MetricType {
    Counter = 0,
    Gauge = 1,
}

/// What a request callback tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Action {
    Continue = 0,
    Pause = 1,
}

const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        name: *const u8,
        name_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, name: *const u8, name_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        name: *const u8,
        name_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        name: *const u8,
        name_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_http_call(
        cluster: *const u8,
        cluster_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Takes back a buffer the host filled through [`proxy_on_memory_allocate`].
fn host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `data` by calling `proxy_on_memory_allocate(size)`, which leaks
    // a `Vec<u8>` of capacity `size`, and hands ownership to this call.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

pub(crate) fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY (each host call below): every pointer is to a live local or slice of the given
    // length, and out-pointers are to locals the host writes before returning.
    Status::check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub(crate) fn current_time_nanos() -> Result<u64, Status> {
    let mut time = 0u64;
    Status::check(unsafe { proxy_get_current_time_nanoseconds(&mut time) })?;
    Ok(time)
}

pub(crate) fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    Status::check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Up to `max_size` bytes of a buffer from `start`; an absent buffer reads as empty.
pub(crate) fn buffer(kind: BufferType, start: usize, max_size: usize) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    let status =
        unsafe { proxy_get_buffer_bytes(kind as u32, start, max_size, &mut data, &mut size) };
    match status {
        Status::NOT_FOUND | Status::EMPTY => Ok(Vec::new()),
        status => {
            Status::check(status)?;
            Ok(host_buffer(data, size))
        }
    }
}

/// A header map in the ABI's serialised form, for [`wire::decode_pairs`].
pub(crate) fn header_map(map: MapType) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    Status::check(unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    Ok(host_buffer(data, size))
}

/// One header's value, `None` if the map does not have it.
pub(crate) fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status {
        Status::NOT_FOUND => Ok(None),
        status => {
            Status::check(status)?;
            Ok(Some(host_buffer(data, size)))
        }
    }
}

pub(crate) fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    Status::check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Adds a header the map does not hold: unlike a replace, Envoy does not search the map first.
pub(crate) fn add_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    Status::check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Sets a header, dropping every value it had.
pub(crate) fn replace_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    Status::check(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Answers the current request from the filter.
pub(crate) fn send_local_response(
    status: u32,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<(), Status> {
    let headers = wire::encode_pairs(headers);
    Status::check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Lets a paused request go on upstream.
pub(crate) fn continue_request() -> Result<(), Status> {
    Status::check(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Resets a request that could not be answered.
pub(crate) fn close_request() -> Result<(), Status> {
    Status::check(unsafe { proxy_close_stream(STREAM_HTTP_REQUEST) })
}

/// Starts a call without a body; the answer arrives at `proxy_on_http_call_response` with the
/// returned token.
pub(crate) fn http_call(
    cluster: &str,
    headers: &[(&str, &[u8])],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let headers = wire::encode_pairs(headers);
    let trailers = wire::encode_pairs::<&str>(&[]);
    let mut token = 0u32;
    Status::check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// A shared-data value and its CAS token (0 is none); `None` if the key was never written.
pub(crate) fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        Status::NOT_FOUND => Ok(None),
        status => {
            Status::check(status)?;
            Ok(Some((host_buffer(data, size), cas)))
        }
    }
}

/// Writes a shared-data value if its CAS token is still `cas` (0: unconditionally).
pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    Status::check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Makes later host calls act on `context`: a call's answer arrives at the root context, and
/// the request that waits for it is another.
pub(crate) fn set_effective_context(context: u32) -> Result<(), Status> {
    Status::check(unsafe { proxy_set_effective_context(context) })
}

pub(crate) fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    Status::check(unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    })?;
    Ok(host_buffer(data, size))
}

pub(crate) fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    Status::check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub(crate) fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    Status::check(unsafe { proxy_increment_metric(id, by) })
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    Status::check(unsafe { proxy_record_metric(id, value) })
}

// The entry points. Envoy looks each up by name and skips the ones a module does not export
// (request bodies, responses, logs), so only the ones the filter needs are here. `proxy_on_done`
// is not: the filter has nothing to finish, and Envoy takes a missing one as `true`, which saves
// a call into the VM on every request (0.1-0.2 us, paired rounds in `scripts/bench envoy`'s
// setup). Cleaning up is `proxy_on_delete`'s, which Envoy also calls when it removes a plugin's
// root context.

extern "C" {
    // wasi-libc's constructors: a reactor module must run them before anything else.
    fn __wasm_call_ctors();
}

#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: Envoy calls `_initialize` once, before any other export.
    unsafe { __wasm_call_ctors() };
    // A panic is a bug, and it still traps; this puts the reason in Envoy's log first.
    std::panic::set_hook(Box::new(|panic| {
        let _ = log(LogLevel::Critical, &panic.to_string());
    }));
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context: u32, root_context: u32) {
    filter::contexts::create(context, root_context);
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context: u32, configuration_size: usize) -> bool {
    filter::contexts::configure(root_context, configuration_size)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context: u32) {
    filter::contexts::tick(root_context);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context: u32,
    _headers: usize,
    _end_of_stream: bool,
) -> Action {
    filter::contexts::request_headers(context)
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _root_context: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    filter::contexts::call_answered(token, body_size);
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context: u32) {
    filter::contexts::delete(context);
}
