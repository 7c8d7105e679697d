//! Envoy's dynamic-module ABI (`v0.2.0`, Envoy 1.40), bound by hand: the hooks Envoy calls in
//! this library, and the callbacks this filter calls in Envoy. Written from the function
//! signatures of Envoy's `source/extensions/dynamic_modules/abi.h`; this is the crate's native
//! `unsafe`, and every pointer and length Envoy hands over is checked here before safe code sees
//! it.
//!
//! - **Callbacks are looked up when Envoy loads the library** ([`envoy_dynamic_module_on_program_init`]),
//!   by name in Envoy's own symbol table, with a marker of ABI `v0.2.0` ([`ABI_MARKER`]). If
//!   Envoy lacks any of them (another ABI), the library answers the load with NULL and Envoy
//!   refuses it with "Failed to initialize dynamic module", instead of running against functions
//!   that are not there or not what they were. Looking them up, rather than
//!   linking against them, also lets the pure parts link into ordinary test binaries.
//! - **No panic crosses into Envoy**: every hook runs under `catch_unwind`. A request whose hook
//!   panicked is answered 500; any other hook does nothing.
//! - Envoy's buffers are valid only during the hook that hands them over, and a header's bytes
//!   only until that header map changes: the safe wrappers tie them to a borrow of [`Filter`].

#![allow(unsafe_code)]

use std::{
    ffi::{c_char, c_void, CStr},
    ops::Deref,
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::NonNull,
    sync::OnceLock,
};

use super::{FilterConfig, Stream};
use crate::call_answer::CallAnswer;

/// The ABI version this library was written against, answered to Envoy at load.
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// A callback that first appeared in ABI `v0.2.0` (Envoy 1.40). The module does not call it; its
/// presence tells this ABI from `v0.1.0` (Envoy 1.39), which exports every callback the module
/// calls under the same names. Envoy itself only warns when a module's ABI version differs from
/// its own, so without this an Envoy 1.39 would run the module against an ABI it was not written
/// for.
const ABI_MARKER: &CStr = c"envoy_dynamic_module_callback_http_has_filter_state";

/// Bytes Envoy owns (`envoy_dynamic_module_type_envoy_buffer`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// Bytes this library owns, read by Envoy during the call (`..._module_buffer`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header Envoy owns (`..._envoy_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl EnvoyHeader {
    const EMPTY: Self = Self {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// Requests with up to this many headers have them read into a buffer on the stack, not the
/// heap; more are read into a heap buffer.
const STACK_HEADERS: usize = 32;

/// A header this library owns (`..._module_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl ModuleHeader {
    fn of(name: &[u8], value: &[u8]) -> Self {
        Self {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_*` (and the other header
/// hooks' statuses, which number alike).
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;
const STOP_ALL_ITERATION_AND_BUFFER: u32 = 3;
/// `envoy_dynamic_module_type_http_callout_init_result_Success` and `..._http_callout_result_Success`.
const CALLOUT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// What a header hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on to the next filter.
    Continue,
    /// Stop here: this filter has answered.
    Stop,
    /// Hold the request (and buffer its body) until this filter continues it.
    Hold,
}

impl HeadersStatus {
    fn code(self) -> u32 {
        match self {
            Self::Continue => CONTINUE,
            Self::Stop => STOP_ITERATION,
            Self::Hold => STOP_ALL_ITERATION_AND_BUFFER,
        }
    }
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    /// Info.
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
}

type FilterPtr = *mut c_void;
type ConfigPtr = *mut c_void;
type SchedulerPtr = *mut c_void;

/// A callout's start, for a request (`http_filter_http_callout`) or a configuration
/// (`http_filter_config_http_callout`): the same signature, on the owner's pointer.
type StartCallout = unsafe extern "C" fn(
    *mut c_void,
    *mut u64,
    ModuleBuffer,
    *mut ModuleHeader,
    usize,
    ModuleBuffer,
    u64,
) -> u32;

/// Starts a GET-style callout without a body through `start`, on `owner`.
///
/// # Safety
/// `start` must be the callout callback for `owner`'s kind, called on the thread the ABI requires
/// for it (the request's worker, or the main thread for a configuration).
unsafe fn start_callout(
    start: StartCallout,
    owner: *mut c_void,
    cluster: &str,
    headers: &[(&str, &[u8])],
    timeout_ms: u32,
) -> Result<u64, CalloutRefused> {
    let mut headers = module_headers(headers);
    let mut id = 0u64;
    // Envoy copies what it is given during the call and writes the id.
    let result = start(
        owner,
        &mut id,
        ModuleBuffer::of(cluster.as_bytes()),
        headers.as_mut_ptr(),
        headers.len(),
        ModuleBuffer::EMPTY,
        u64::from(timeout_ms),
    );
    if result == CALLOUT_SUCCESS {
        Ok(id)
    } else {
        Err(CalloutRefused(result))
    }
}

fn module_headers(headers: &[(&str, &[u8])]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(name, value)| ModuleHeader::of(name.as_bytes(), value))
        .collect()
}

/// The callbacks this filter uses, looked up in Envoy at load.
struct Callbacks {
    get_headers_size: unsafe extern "C" fn(FilterPtr, u32) -> usize,
    get_headers: unsafe extern "C" fn(FilterPtr, u32, *mut EnvoyHeader) -> bool,
    set_header: unsafe extern "C" fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer) -> bool,
    add_header: unsafe extern "C" fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer) -> bool,
    send_response:
        unsafe extern "C" fn(FilterPtr, u32, *mut ModuleHeader, usize, ModuleBuffer, ModuleBuffer),
    continue_decoding: unsafe extern "C" fn(FilterPtr),
    filter_callout: StartCallout,
    config_callout: StartCallout,
    config_scheduler_new: unsafe extern "C" fn(ConfigPtr) -> SchedulerPtr,
    config_scheduler_commit: unsafe extern "C" fn(SchedulerPtr, u64),
    config_scheduler_delete: unsafe extern "C" fn(SchedulerPtr),
    log: unsafe extern "C" fn(u32, ModuleBuffer),
    log_enabled: unsafe extern "C" fn(u32) -> bool,
    define_counter:
        unsafe extern "C" fn(ConfigPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32,
    filter_increment_counter:
        unsafe extern "C" fn(FilterPtr, usize, *mut ModuleBuffer, usize, u64) -> u32,
    config_increment_counter:
        unsafe extern "C" fn(ConfigPtr, usize, *mut ModuleBuffer, usize, u64) -> u32,
}

static CALLBACKS: OnceLock<Callbacks> = OnceLock::new();

/// Looks up one callback in Envoy's symbol table.
///
/// # Safety
/// `F` must be the function pointer type of the named callback in ABI `v0.2.0`.
unsafe fn lookup<F: Copy>(name: &CStr, missing: &mut Vec<String>) -> Option<F> {
    debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    let address = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
    if address.is_null() {
        missing.push(name.to_string_lossy().into_owned());
        return None;
    }
    // SAFETY: a non-null symbol of that name is that function (the caller names its type).
    Some(std::mem::transmute_copy::<*mut c_void, F>(&address))
}

impl Callbacks {
    fn resolve() -> Result<Self, Vec<String>> {
        let mut missing = Vec::new();
        // SAFETY: each type below is the callback's signature in ABI v0.2.0.
        let callbacks = unsafe {
            (
                lookup(
                    c"envoy_dynamic_module_callback_http_get_headers_size",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_get_headers",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_set_header",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_add_header",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_send_response",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_continue_decoding",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_http_callout",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_http_callout",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_scheduler_new",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_scheduler_commit",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_scheduler_delete",
                    &mut missing,
                ),
                lookup(c"envoy_dynamic_module_callback_log", &mut missing),
                lookup(c"envoy_dynamic_module_callback_log_enabled", &mut missing),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_define_counter",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_increment_counter",
                    &mut missing,
                ),
                lookup(
                    c"envoy_dynamic_module_callback_http_filter_config_increment_counter",
                    &mut missing,
                ),
            )
        };
        // SAFETY: looked up for its presence only, never called.
        let marker = unsafe { lookup::<*mut c_void>(ABI_MARKER, &mut missing) };
        match (marker, callbacks) {
            (None, _) => Err(missing),
            (Some(_), callbacks) => match callbacks {
                (
                    Some(get_headers_size),
                    Some(get_headers),
                    Some(set_header),
                    Some(add_header),
                    Some(send_response),
                    Some(continue_decoding),
                    Some(filter_callout),
                    Some(config_callout),
                    Some(config_scheduler_new),
                    Some(config_scheduler_commit),
                    Some(config_scheduler_delete),
                    Some(log),
                    Some(log_enabled),
                    Some(define_counter),
                    Some(filter_increment_counter),
                    Some(config_increment_counter),
                ) => Ok(Self {
                    get_headers_size,
                    get_headers,
                    set_header,
                    add_header,
                    send_response,
                    continue_decoding,
                    filter_callout,
                    config_callout,
                    config_scheduler_new,
                    config_scheduler_commit,
                    config_scheduler_delete,
                    log,
                    log_enabled,
                    define_counter,
                    filter_increment_counter,
                    config_increment_counter,
                }),
                _ => Err(missing),
            },
        }
    }
}

fn callbacks() -> Option<&'static Callbacks> {
    CALLBACKS.get()
}

/// Envoy's bytes as a slice; empty for a null pointer.
///
/// # Safety
/// `ptr` must be null or valid for `length` bytes for the returned lifetime.
unsafe fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr, length)
}

/// Envoy's headers as pairs of slices; none for a null array.
///
/// # Safety
/// `headers` must be null or point to `count` headers valid for the returned lifetime.
unsafe fn envoy_headers<'a>(
    headers: *const EnvoyHeader,
    count: usize,
) -> Vec<(&'a [u8], &'a [u8])> {
    if headers.is_null() {
        return Vec::new();
    }
    std::slice::from_raw_parts(headers, count)
        .iter()
        .map(|h| {
            (
                envoy_bytes(h.key_ptr, h.key_length),
                envoy_bytes(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// Writes a log line through Envoy (component `dynamic_modules`), if that level is enabled.
pub fn log(level: LogLevel, line: &str) {
    if let Some(callbacks) = callbacks() {
        // SAFETY: both callbacks are thread-safe in the ABI and read the buffer during the call.
        unsafe {
            if (callbacks.log_enabled)(level as u32) {
                (callbacks.log)(level as u32, ModuleBuffer::of(line.as_bytes()));
            }
        }
    }
}

/// Starts a GET through a cluster; the callout's id, or why it could not start.
#[derive(Debug, Clone, Copy)]
pub struct CalloutRefused(pub u32);

/// The request Envoy runs this filter for, during one of its hooks.
#[derive(Debug)]
pub struct Filter {
    ptr: FilterPtr,
    callbacks: &'static Callbacks,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callbacks")
    }
}

impl Filter {
    /// The request's headers, pseudo-headers (`:method`, `:path`, …) included. They borrow the
    /// filter: no header can be changed while they are held.
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: the filter pointer is the one of the running hook; Envoy fills exactly
        // `get_headers_size` entries, pointing into the live header map.
        unsafe {
            let count = (self.callbacks.get_headers_size)(self.ptr, REQUEST_HEADER);
            if count == 0 {
                return Vec::new();
            }
            let mut on_stack = [EnvoyHeader::EMPTY; STACK_HEADERS];
            let mut on_heap = Vec::new();
            let buffer = match on_stack.get_mut(..count) {
                Some(buffer) => buffer,
                None => {
                    on_heap.resize(count, EnvoyHeader::EMPTY);
                    &mut on_heap[..]
                }
            };
            if !(self.callbacks.get_headers)(self.ptr, REQUEST_HEADER, buffer.as_mut_ptr()) {
                return Vec::new();
            }
            envoy_headers(buffer.as_ptr(), count)
        }
    }

    /// Replaces every value of a request header with `value`; an empty value removes it (the ABI
    /// has no other removal). False if Envoy could not.
    pub fn set_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        let value = if value.is_empty() {
            ModuleBuffer::EMPTY
        } else {
            ModuleBuffer::of(value)
        };
        // SAFETY: Envoy copies both buffers during the call.
        unsafe {
            (self.callbacks.set_header)(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Adds a request header the request does not carry. Cheaper than a set, which first
    /// searches the header map for the name (about 0.7 µs a header in `scripts/bench envoy`'s
    /// Envoy). False if Envoy could not, or `value` is empty.
    pub fn add_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        // SAFETY: Envoy copies both buffers during the call.
        unsafe {
            (self.callbacks.add_header)(
                self.ptr,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Answers the request from the filter.
    pub fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let mut headers = module_headers(headers);
        // SAFETY: Envoy copies the headers, body and details during the call.
        unsafe {
            (self.callbacks.send_response)(
                self.ptr,
                u32::from(status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// Adds `by` to a counter the configuration defined.
    pub fn count(&mut self, counter: Option<usize>, by: u64) {
        if let Some(id) = counter {
            // SAFETY: no labels; the id is one Envoy handed out for this configuration.
            unsafe {
                (self.callbacks.filter_increment_counter)(self.ptr, id, std::ptr::null_mut(), 0, by)
            };
        }
    }

    /// Lets a held request go on.
    pub fn continue_decoding(&mut self) {
        // SAFETY: the filter pointer is the one of the running hook.
        unsafe { (self.callbacks.continue_decoding)(self.ptr) }
    }

    /// Starts a callout for this request; its answer comes to the request's
    /// `http_callout_done` hook.
    pub fn callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u32,
    ) -> Result<u64, CalloutRefused> {
        // SAFETY: the filter pointer is the one of the running hook, on its worker thread.
        unsafe {
            start_callout(
                self.callbacks.filter_callout,
                self.ptr,
                cluster,
                headers,
                timeout_ms,
            )
        }
    }
}

/// Envoy's side of a filter configuration: callouts and the scheduler, on the main thread.
#[derive(Debug)]
pub struct ConfigHandle {
    ptr: ConfigPtr,
    callbacks: &'static Callbacks,
}

// SAFETY: Envoy's configuration object outlives this handle (it is dropped in the configuration's
// destroy hook), and the handle's calls are made on the main thread only, from the
// configuration hooks (`config_new`, `config_scheduled`, `config_http_callout_done`).
unsafe impl Send for ConfigHandle {}
// SAFETY: as above; worker threads hold the configuration but never call through this handle.
unsafe impl Sync for ConfigHandle {}

impl ConfigHandle {
    /// Starts a callout for the configuration (main thread only); its answer comes to the
    /// configuration's `http_callout_done` hook.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        timeout_ms: u32,
    ) -> Result<u64, CalloutRefused> {
        // SAFETY: called on the main thread from a configuration hook.
        unsafe {
            start_callout(
                self.callbacks.config_callout,
                self.ptr,
                cluster,
                headers,
                timeout_ms,
            )
        }
    }

    /// Defines a counter (only during `config_new`); Envoy shows it as
    /// `<metrics_namespace>.<name>`. `None` if Envoy refused.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: called on the main thread during `config_new`; Envoy copies the name.
        let result = unsafe {
            (self.callbacks.define_counter)(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Adds `by` to a counter, from the main thread.
    pub fn count(&self, counter: Option<usize>, by: u64) {
        if let Some(id) = counter {
            // SAFETY: no labels; the id is one Envoy handed out for this configuration.
            unsafe {
                (self.callbacks.config_increment_counter)(self.ptr, id, std::ptr::null_mut(), 0, by)
            };
        }
    }

    /// A scheduler that runs the configuration's `scheduled` hook on the main thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: called on the main thread during `config_new`.
        let ptr = unsafe { (self.callbacks.config_scheduler_new)(self.ptr) };
        (!ptr.is_null()).then_some(Scheduler {
            ptr,
            callbacks: self.callbacks,
        })
    }
}

/// Posts events to the configuration's `scheduled` hook; deleted when dropped.
#[derive(Debug)]
pub struct Scheduler {
    ptr: SchedulerPtr,
    callbacks: &'static Callbacks,
}

// SAFETY: committing is thread-safe in the ABI (a post to the main thread's dispatcher), and
// the pointer is deleted once, by `Drop`.
unsafe impl Send for Scheduler {}
// SAFETY: as above.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Runs the configuration's `scheduled` hook on the main thread soon.
    pub fn commit(&self, event: u64) {
        // SAFETY: see the `Send` impl.
        unsafe { (self.callbacks.config_scheduler_commit)(self.ptr, event) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by `config_scheduler_new`, deleted only here.
        unsafe { (self.callbacks.config_scheduler_delete)(self.ptr) }
    }
}

/// A callout's answer: `:status` absent when it failed.
fn callout_answer(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> CallAnswer {
    let mut answer = CallAnswer::failed();
    if result != CALLOUT_SUCCESS {
        return answer;
    }
    // SAFETY: Envoy's arrays are valid during the hook; nulls give nothing.
    let headers = unsafe { envoy_headers(headers, headers_size) };
    let text = |value: &[u8]| std::str::from_utf8(value).ok().map(str::to_string);
    for (name, value) in headers {
        match name {
            b":status" => answer.status = text(value).and_then(|s| s.parse().ok()),
            b"cache-control" => answer.cache_control = text(value),
            b"etag" => answer.etag = text(value),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: as above.
        for chunk in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            // SAFETY: as above.
            body.extend_from_slice(unsafe { envoy_bytes(chunk.ptr, chunk.length) });
        }
    }
    answer.body = Ok(body);
    answer
}

/// Runs a hook body; a panic is caught and becomes `fallback`.
fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// # Safety
/// Called by Envoy with a pointer this library returned from `on_http_filter_new`.
unsafe fn stream<'a>(ptr: *const c_void) -> Option<&'a mut Stream> {
    (ptr as *mut Stream).as_mut()
}

/// # Safety
/// Called by Envoy with a pointer this library returned from `on_http_filter_config_new`.
unsafe fn config<'a>(ptr: *const c_void) -> Option<&'a FilterConfig> {
    (ptr as *const FilterConfig).as_ref()
}

fn filter(ptr: FilterPtr) -> Option<Filter> {
    Some(Filter {
        ptr,
        callbacks: callbacks()?,
    })
}

// ---- Hooks Envoy calls ----------------------------------------------------------------------

/// Load: looks up every callback; NULL (Envoy refuses the module) if any is missing.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guarded(std::ptr::null(), || match Callbacks::resolve() {
        Ok(resolved) => {
            let _ = CALLBACKS.set(resolved);
            ABI_VERSION.as_ptr()
        }
        Err(missing) => {
            eprintln!(
                "edgeauth: this Envoy does not offer the dynamic-module ABI {} (missing: {}); refusing to load",
                ABI_VERSION.to_string_lossy(),
                missing.join(", ")
            );
            std::ptr::null()
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: ConfigPtr,
    name: EnvoyBuffer,
    configuration: EnvoyBuffer,
) -> *const c_void {
    guarded(std::ptr::null(), || {
        let Some(callbacks) = callbacks() else {
            return std::ptr::null();
        };
        let handle = ConfigHandle {
            ptr: config_envoy_ptr,
            callbacks,
        };
        // SAFETY: both buffers are valid during this call; they are copied before it returns.
        let (name, configuration) = unsafe {
            (
                envoy_bytes(name.ptr, name.length),
                envoy_bytes(configuration.ptr, configuration.length),
            )
        };
        match super::config_new(handle, name, configuration) {
            Some(config) => Box::into_raw(config) as *const c_void,
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config_ptr: *const c_void) {
    guarded((), || {
        if !config_ptr.is_null() {
            // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(config_ptr as *mut FilterConfig) });
        }
    });
}

/// Per-route configuration is not supported: NULL makes Envoy refuse it rather than ignore it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _configuration: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _ptr: *const c_void,
) {
}

/// The configuration a stream was made from, borrowed for the stream's life. Envoy's filter
/// holds its configuration (a `shared_ptr`) until after `on_http_filter_destroy`, and Envoy
/// destroys the configuration this library made only when it destroys its own, so the
/// configuration outlives every stream made from it. Borrowing it, where an `Arc` would share
/// it, spares each request two atomic writes to a counter that every worker thread writes.
#[derive(Debug, Clone, Copy)]
pub struct ConfigRef(NonNull<FilterConfig>);

impl Deref for ConfigRef {
    type Target = FilterConfig;

    fn deref(&self) -> &FilterConfig {
        // SAFETY: made in `on_http_filter_new` from the configuration Envoy passed, which lives
        // as long as every stream made from it (see the type).
        unsafe { self.0.as_ref() }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _filter_envoy_ptr: FilterPtr,
) -> *const c_void {
    guarded(std::ptr::null(), || {
        match NonNull::new(config_ptr as *mut FilterConfig) {
            Some(config) => {
                Box::into_raw(Box::new(super::stream_new(ConfigRef(config)))) as *const c_void
            }
            // Envoy answers the request 500 (`dynamic_module_filter_init_failed`).
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: FilterPtr,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let Some(mut envoy) = filter(filter_envoy_ptr) else {
        return STOP_ITERATION;
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy passes the stream this library made.
        let stream = unsafe { stream(filter_ptr) }?;
        Some(super::request_headers(stream, &mut envoy))
    }));
    match outcome {
        Ok(Some(status)) => status.code(),
        // No stream, or a panic: answered 500, never passed.
        _ => {
            super::fail(&mut envoy, "the request could not be checked");
            STOP_ITERATION
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_ptr: *const c_void) {
    guarded((), || {
        if !filter_ptr.is_null() {
            // SAFETY: made by `Box::into_raw` in `on_http_filter_new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(filter_ptr as *mut Stream) });
        }
    });
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy_ptr: FilterPtr,
    filter_ptr: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    let Some(mut envoy) = filter(filter_envoy_ptr) else {
        return;
    };
    let done = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy passes the stream this library made.
        let stream = unsafe { stream(filter_ptr) }?;
        let answer = callout_answer(result, headers, headers_size, body_chunks, body_chunks_size);
        super::keys_answered(stream, &mut envoy, callout_id, &answer);
        Some(())
    }));
    if done.is_err() {
        super::fail(&mut envoy, "the request could not be checked");
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
) {
}

/// `envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue`: Envoy's own local
/// replies (and this filter's) go out as they are.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy_ptr: FilterPtr,
    _filter_ptr: *const c_void,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy_ptr: ConfigPtr,
    config_ptr: *const c_void,
    _event_id: u64,
) {
    guarded((), || {
        // SAFETY: Envoy passes the configuration this library made.
        if let Some(config) = unsafe { config(config_ptr) } {
            super::config_tick(config);
        }
    });
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy_ptr: ConfigPtr,
    config_ptr: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guarded((), || {
        // SAFETY: Envoy passes the configuration this library made.
        if let Some(config) = unsafe { config(config_ptr) } {
            let answer =
                callout_answer(result, headers, headers_size, body_chunks, body_chunks_size);
            super::config_answered(config, callout_id, &answer);
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy_ptr: ConfigPtr,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy_ptr: ConfigPtr,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy_ptr: ConfigPtr,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy_ptr: ConfigPtr,
    _config_ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy_ptr: ConfigPtr,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}
