//! Turning JS exceptions into `cache_core` errors, without panicking.

use std::fmt;

use cache_core::{Error, Operation};
use js_sys::Reflect;
use wasm_bindgen::{JsCast, JsValue};

/// A JS exception copied into Rust strings, so it is `Send + Sync` and can travel
/// inside a [`cache_core::Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsError {
    /// The exception's `name` (`QuotaExceededError`, `InvalidStateError`...).
    pub name: String,
    /// The exception's `message`.
    pub message: String,
}

impl JsError {
    /// Copies the `name` and `message` of a thrown JS value.
    pub fn from_js(value: &JsValue) -> Self {
        let field = |f: &str| {
            Reflect::get(value, &JsValue::from_str(f))
                .ok()
                .and_then(|v| v.as_string())
        };
        match (field("name"), field("message")) {
            (Some(name), message) => JsError {
                name,
                message: message.unwrap_or_default(),
            },
            (None, Some(message)) => JsError {
                name: "Error".into(),
                message,
            },
            (None, None) => JsError {
                name: "Error".into(),
                message: value
                    .as_string()
                    .unwrap_or_else(|| "a non-Error value was thrown".into()),
            },
        }
    }

    /// An error made on the Rust side.
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        JsError {
            name: name.into(),
            message: message.into(),
        }
    }

    /// Whether the storage quota ran out (`QuotaExceededError`, legacy code 22).
    pub fn is_quota(&self) -> bool {
        self.name == "QuotaExceededError" || self.name == "NS_ERROR_DOM_QUOTA_REACHED"
    }
}

impl fmt::Display for JsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for JsError {}

pub(crate) fn backend(tier: &str, op: Operation, err: &JsValue) -> Error {
    Error::backend(tier, op, JsError::from_js(err))
}

/// `globalThis[name]`, treating a throwing getter (storage blocked) like an
/// absent property.
pub(crate) fn global_property(name: &str) -> Result<JsValue, JsError> {
    match Reflect::get(&js_sys::global(), &JsValue::from_str(name)) {
        Ok(v) if v.is_undefined() || v.is_null() => Err(JsError::new(
            "NotSupportedError",
            format!("`{name}` is not available in this context"),
        )),
        Ok(v) => Ok(v),
        Err(e) => Err(JsError::from_js(&e)),
    }
}

/// Awaits a promise, mapping a rejection to a [`JsError`].
pub(crate) async fn await_promise(promise: js_sys::Promise) -> Result<JsValue, JsError> {
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|e| JsError::from_js(&e))
}

/// `value as T` after an `instanceof` check, else a [`JsError`].
pub(crate) fn cast<T: JsCast>(value: JsValue, what: &str) -> Result<T, JsError> {
    value
        .dyn_into::<T>()
        .map_err(|_| JsError::new("TypeError", format!("expected {what}")))
}
