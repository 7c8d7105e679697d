//! The hot path's one Workers KV call: a bulk read of a token's deny-list keys, one round trip
//! for all of them (billed per key, like single reads).
//!
//! workers-rs's `KvStore::get_bulk` builds an options object through serde-wasm-bindgen and
//! copies the whole answer into a `HashMap`; this binding passes the keys alone (text is KV's
//! default type) and reads back only the entries asked for. Writes and the cron's cursor, off
//! the hot path, keep workers-rs's `KvStore`.

use worker::{
    js_sys::{Array, Map, Promise, Reflect},
    wasm_bindgen::{self, prelude::*},
    wasm_bindgen_futures::JsFuture,
    Env,
};

use crate::describe;

#[wasm_bindgen]
extern "C" {
    /// A Workers KV namespace binding.
    #[wasm_bindgen(extends = worker::js_sys::Object)]
    #[derive(Debug, Clone)]
    pub type KvNamespace;

    /// `get(keys)`: up to 100 keys, answered with a `Map` of each key to its text or `null`.
    #[wasm_bindgen(method, catch, js_name = get)]
    fn get_many(this: &KvNamespace, keys: &Array) -> Result<Promise, JsValue>;
}

impl KvNamespace {
    /// The namespace bound to `binding`.
    pub fn from_env(env: &Env, binding: &str) -> Result<Self, String> {
        let value = Reflect::get(env, &binding.into()).map_err(describe)?;
        if value.is_undefined() {
            return Err(format!("no KV namespace is bound to {binding}"));
        }
        Ok(value.unchecked_into())
    }

    /// The text stored under each of `keys`, in order (`None`: nothing stored).
    pub async fn read(&self, keys: &[&str]) -> Result<Vec<Option<String>>, String> {
        let keys: Vec<JsValue> = keys.iter().map(|key| JsValue::from_str(key)).collect();
        let promise = self
            .get_many(&keys.iter().collect::<Array>())
            .map_err(describe)?;
        let answer: Map = JsFuture::from(promise)
            .await
            .map_err(describe)?
            .dyn_into()
            .map_err(|_| "the KV bulk read gave no Map".to_string())?;
        Ok(keys.iter().map(|key| answer.get(key).as_string()).collect())
    }
}
