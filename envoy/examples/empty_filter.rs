//! A proxy-wasm HTTP filter that does nothing: the floor under any Wasm filter in Envoy (the VM
//! entry for each request's callbacks). `scripts/bench envoy` runs it beside the edgeauth filter
//! and `jwt_authn`, so the report shows how much of the filter's cost is Wasm itself.
//!
//! Built for the benchmark only: `cargo build --release -p edgeauth-envoy --example empty_filter
//! --target wasm32-wasip1`.

#[cfg(target_family = "wasm")]
mod filter {
    use proxy_wasm::{
        traits::{Context, HttpContext, RootContext},
        types::{Action, ContextType},
    };

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;
    impl Context for Root {}
    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Request))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Request;
    impl Context for Request {}
    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }
    }
}
