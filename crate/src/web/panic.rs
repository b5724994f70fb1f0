//! What a panic does in the browser. wasm32 aborts on a panic: the module traps and its
//! memory can no longer be trusted. So the panic is logged, the next call into the module
//! starts a fresh instance (`Pipeline.load` works again; handles from before are refused),
//! and a `webdiffusion-panic` event carrying the message is dispatched on the global
//! scope: a promise that was pending in the trapped instance never settles, and the
//! worker rejects its requests on this event.

use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;

pub const EVENT: &str = "webdiffusion-panic";

#[wasm_bindgen(start)]
fn start() {
    // Runs on every instantiation, including the fresh one after a panic.
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        wasm_bindgen::handler::schedule_reinit();
        let _ = dispatch(&info.to_string());
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

/// Panics, for the tests of the recovery above; not part of the API.
#[wasm_bindgen(js_name = "__panicForTesting", skip_typescript)]
pub fn panic_for_testing() {
    panic!("panic requested by __panicForTesting");
}
