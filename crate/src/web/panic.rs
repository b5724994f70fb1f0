//! What a panic does in the browser. wasm32 aborts on a panic: the instance traps, its
//! memory can no longer be trusted, and the promises it was driving never settle. So the
//! panic is logged and a `webdiffusion-panic` event carrying the message is dispatched on
//! the global scope, once per instance. The instance is not restarted in place: callbacks
//! of its pending work would run in the new one with stale pointers. A fresh instance is a
//! fresh import of the module; the package's worker.js does that on this event and fails
//! the requests that were running.

use std::sync::atomic::{AtomicBool, Ordering};

use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;

pub const EVENT: &str = "webdiffusion-panic";

/// Whether this instance panicked already (later panics in the trapped instance, from
/// callbacks of its pending work, are logged but not announced again).
static PANICKED: AtomicBool = AtomicBool::new(false);

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        if !PANICKED.swap(true, Ordering::SeqCst) {
            let _ = dispatch(&info.to_string());
        }
    }));
}

/// Dispatches `new CustomEvent(EVENT, { detail: message })` on `globalThis`.
fn dispatch(message: &str) -> Result<(), JsValue> {
    let global = js_sys::global();
    let constructor: Function = Reflect::get(&global, &"CustomEvent".into())?.dyn_into()?;
    let init = Object::new();
    Reflect::set(&init, &"detail".into(), &message.into())?;
    let event = Reflect::construct(&constructor, &Array::of2(&EVENT.into(), &init))?;
    let dispatch: Function = Reflect::get(&global, &"dispatchEvent".into())?.dyn_into()?;
    dispatch.call1(&global, &event)?;
    Ok(())
}

/// Panics, for the tests of the recovery above; only in builds with the `testing` feature.
#[cfg(feature = "testing")]
#[wasm_bindgen(js_name = "__panicForTesting", skip_typescript)]
pub fn panic_for_testing() {
    panic!("panic requested by __panicForTesting");
}
